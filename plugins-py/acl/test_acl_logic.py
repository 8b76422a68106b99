"""Unit tests of the acl policy's pure logic; no wasm needed.

Run: python3 -m unittest discover -s plugins-py/acl
"""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import acl_logic  # noqa: E402
from acl_logic import ConfigError, parse_config  # noqa: E402

ADMIN_RULE = {"path_prefix": "/admin", "require_header": "x-role", "allow": ["admin"]}


def cfg(*rules, **top):
    return json.dumps({"rules": list(rules), **top})


def refused(text):
    """The message of the ConfigError that parse_config raises for `text`."""
    try:
        parse_config(text)
    except ConfigError as e:
        return str(e)
    raise AssertionError(f"config was accepted: {text}")


class ParseConfigTest(unittest.TestCase):
    def test_valid_config_with_defaults(self):
        c = parse_config(cfg(ADMIN_RULE))
        self.assertEqual(c.deny_status, 403)
        self.assertEqual(c.rules, (acl_logic.Rule("/admin", "x-role", ("admin",)),))

    def test_deny_status_and_normalisation(self):
        c = parse_config(
            cfg({"path_prefix": "/ops/", "require_header": "X-Team", "allow": ["sre", "dev"]},
                deny_status=404)
        )
        self.assertEqual(c.deny_status, 404)
        # Trailing slash dropped, header name lower-cased like the host's.
        self.assertEqual(c.rules[0], acl_logic.Rule("/ops", "x-team", ("sre", "dev")))

    def test_empty_rules_allowed(self):
        self.assertEqual(parse_config('{"rules": []}').rules, ())

    def test_refusals_name_the_field(self):
        cases = {
            "not json": "acl config: invalid JSON",
            "[]": "acl config: must be a JSON object",
            "{}": "rules: required",
            '{"rules": {}}': "rules: must be a list",
            cfg(ADMIN_RULE, extra=1): "extra: unknown field",
            cfg("x"): "rules[0]: must be an object",
            cfg({**ADMIN_RULE, "alow": ["a"]}): "rules[0].alow: unknown field",
            cfg(ADMIN_RULE, {"path_prefix": "/x", "allow": ["a"]}): "rules[1].require_header: required",
            cfg({**ADMIN_RULE, "allow": "admin"}): "rules[0].allow: must be a list of strings",
            cfg({**ADMIN_RULE, "allow": ["admin", 1]}): "rules[0].allow: must be a list of strings",
            cfg({**ADMIN_RULE, "allow": []}): "rules[0].allow: must not be empty",
            cfg({**ADMIN_RULE, "allow": [" admin"]}): "rules[0].allow: ' admin' must be",
            cfg({**ADMIN_RULE, "allow": ["a,b"]}): "rules[0].allow: 'a,b' must be",
            cfg({**ADMIN_RULE, "path_prefix": "admin"}): "rules[0].path_prefix: must be a string starting with `/`",
            cfg({**ADMIN_RULE, "path_prefix": 5}): "rules[0].path_prefix: must be a string",
            cfg({**ADMIN_RULE, "path_prefix": "/a?b"}): "rules[0].path_prefix: must not contain",
            cfg({**ADMIN_RULE, "require_header": ""}): "rules[0].require_header: must be an HTTP header name",
            cfg({**ADMIN_RULE, "require_header": "x role"}): "rules[0].require_header: must be an HTTP header name",
            cfg(ADMIN_RULE, deny_status="403"): "deny_status: must be an integer from 400 to 599",
            cfg(ADMIN_RULE, deny_status=200): "deny_status: must be an integer",
            cfg(ADMIN_RULE, deny_status=True): "deny_status: must be an integer",
        }
        for text, expected in cases.items():
            with self.subTest(text=text):
                self.assertIn(expected, refused(text))
                self.assertTrue(refused(text).startswith(expected.split(":")[0]))


class PathTest(unittest.TestCase):
    def test_prefix_matches_on_segment_boundary(self):
        for path in ["/admin", "/admin/", "/admin/x", "/admin?q=1", "/admin#f"]:
            self.assertTrue(acl_logic.prefix_matches("/admin", path), path)
        for path in ["/administrator", "/admi", "/", "/x/admin", "/Admin"]:
            self.assertFalse(acl_logic.prefix_matches("/admin", path), path)
        self.assertTrue(acl_logic.prefix_matches("/", "/anything"))

    def test_normalize_path(self):
        self.assertEqual(acl_logic.normalize_path("/%61dmin/x?q"), "/admin/x")
        self.assertEqual(acl_logic.normalize_path("/public/../admin"), "/admin")
        self.assertEqual(acl_logic.normalize_path("//admin//x"), "/admin/x")
        self.assertEqual(acl_logic.normalize_path("/public/%2e%2e/admin"), "/admin")
        self.assertEqual(acl_logic.normalize_path("/public\\..\\admin"), "/admin")

    def test_strip_query(self):
        self.assertEqual(acl_logic.strip_query("/a/b?token=s#f"), "/a/b")

    def test_first_matching_rule_wins(self):
        c = parse_config(cfg(
            {"path_prefix": "/admin/public", "require_header": "x-role", "allow": ["guest"]},
            ADMIN_RULE,
        ))
        self.assertEqual(acl_logic.find_rule(c, "/admin/public/x"), 0)
        self.assertEqual(acl_logic.find_rule(c, "/admin/x"), 1)
        self.assertIsNone(acl_logic.find_rule(c, "/administrator"))

    def test_encoded_or_dotted_paths_still_match(self):
        c = parse_config(cfg(ADMIN_RULE))
        for path in ["/%61dmin", "/public/../admin/x", "//admin", "/x/%2E%2E/admin"]:
            self.assertEqual(acl_logic.find_rule(c, path), 0, path)


class EvaluateTest(unittest.TestCase):
    def setUp(self):
        self.c = parse_config(cfg({**ADMIN_RULE, "allow": ["admin", "ops"]}))

    def test_no_rule_matches_passes(self):
        self.assertIsNone(acl_logic.evaluate(self.c, "/public", []))
        self.assertIsNone(acl_logic.evaluate(self.c, "/administrator", []))

    def test_allowed_roles(self):
        for headers in (
            [("x-role", b"admin")],
            [("x-role", b" guest , ops ")],
            [("x-role", b"guest"), ("x-role", b"admin")],
        ):
            self.assertIsNone(acl_logic.evaluate(self.c, "/admin/x?q", headers), headers)

    def test_missing_header_denied(self):
        d = acl_logic.evaluate(self.c, "/admin", [("x-other", b"admin"), ("x-role", b" , ")])
        self.assertEqual(d, acl_logic.Denial(rule_index=0, reason="missing_header", role=""))

    def test_wrong_role_denied_and_role_kept_for_the_log(self):
        d = acl_logic.evaluate(self.c, "/admin", [("x-role", b"guest, Admin")])
        self.assertEqual(d, acl_logic.Denial(rule_index=0, reason="role_not_allowed", role="guest,Admin"))

    def test_logged_role_is_bounded(self):
        d = acl_logic.evaluate(self.c, "/admin", [("x-role", b"g" * 1000)])
        self.assertEqual(len(d.role), acl_logic.MAX_LOGGED_ROLE_CHARS)

    def test_bytes_that_are_not_utf8_never_match(self):
        # The 0.2.0 host passes header values as sent; 0.1.0's refused these.
        c = parse_config(cfg({**ADMIN_RULE, "allow": ["admin", "\udcff"]}))
        d = acl_logic.evaluate(c, "/admin", [("x-role", b"\xff")])
        self.assertEqual(d, acl_logic.Denial(rule_index=0, reason="role_not_allowed", role="\ufffd"))
        # The other items of such a value still count.
        self.assertIsNone(acl_logic.evaluate(c, "/admin", [("x-role", b"\xff, admin")]))
        self.assertIsNone(acl_logic.evaluate(c, "/admin", [("x-role", "admin".encode())]))

    def test_header_asked_for_only_when_a_rule_matches(self):
        asked = []

        def values_of(name):
            asked.append(name)
            return [b"admin"]

        self.assertIsNone(acl_logic.decide(self.c, "/public", values_of))
        self.assertEqual(asked, [])
        self.assertIsNone(acl_logic.decide(self.c, "/admin", values_of))
        self.assertEqual(asked, ["x-role"])

    def test_deny_body(self):
        self.assertEqual(
            json.loads(acl_logic.DENY_BODY), {"error": "access denied", "code": "forbidden"}
        )
        self.assertIn(("content-type", b"application/json"), acl_logic.JSON_HEADERS)


if __name__ == "__main__":
    unittest.main()
