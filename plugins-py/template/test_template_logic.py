"""Unit tests of the policy's logic, run natively: no component, no sidecar.
The component itself is tested by test_component.py (cases.toml)."""

import json
import unittest

import template_logic
from template_logic import ConfigError, parse_config


def refusal(text):
    with unittest.TestCase().assertRaises(ConfigError) as caught:
        parse_config(text)
    return str(caught.exception)


class ParseConfigTest(unittest.TestCase):
    def test_defaults_the_status_and_lower_cases_the_header(self):
        self.assertEqual(parse_config('{"header": "X-Api-Key"}'), template_logic.Config("x-api-key", 401))
        self.assertEqual(parse_config('{"header": "x", "status": 403}').status, 403)

    def test_a_bad_config_is_refused_naming_the_field(self):
        cases = {
            '{"header": ""}': "header: must not be empty",
            "{}": "header: required",
            '{"header": "x", "status": 200}': "status: 200 is not an error status",
            '{"header": "x", "status": "401"}': "status:",
            '{"header": "x", "status": true}': "status:",
            '{"header": "x", "heder": "y"}': "heder: unknown field",
            "[]": "config: must be a JSON object",
            "not json": "config: not JSON",
        }
        for text, expected in cases.items():
            with self.subTest(text=text):
                self.assertTrue(refusal(text).startswith(expected), refusal(text))


class DecideTest(unittest.TestCase):
    def test_a_request_with_the_header_passes(self):
        config = parse_config('{"header": "x-api-key"}')
        self.assertIsNone(template_logic.decide(config, [b"k"]))

    def test_a_request_without_the_header_is_refused_with_json(self):
        config = parse_config('{"header": "x-api-key", "status": 403}')
        status, body = template_logic.decide(config, [])
        self.assertEqual(status, 403)
        self.assertEqual(
            json.loads(body), {"error": "missing header `x-api-key`", "code": "missing_header"}
        )


if __name__ == "__main__":
    unittest.main()
