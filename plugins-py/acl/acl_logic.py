"""Pure logic of the `acl` policy: config parsing, path matching, decisions.

This module imports only the standard library, never the bindings that
componentize-py generates, so `python3 -m unittest` can test it natively;
`app.py` is the thin glue between it and the WIT world.

Config (JSON object; unknown fields are refused):

    {"rules": [{"path_prefix": "/admin",
                "require_header": "x-role",
                "allow": ["admin"]}, ...],
     "deny_status": 403}

- `rules` (required, a list): checked in order; the first rule whose
  `path_prefix` matches the request path decides. A request no rule matches
  passes unchanged.
- `path_prefix`: starts with `/`; matches on a segment boundary (`/admin`
  matches `/admin`, `/admin/x` and `/admin?q`, not `/administrator`).
- `require_header`: the header whose values are checked (a header may repeat,
  and each value may be a comma-separated list; items are trimmed). Values
  are compared as UTF-8 text; bytes that are not UTF-8 never match.
- `allow`: the values that grant access; at least one must be present.
- `deny_status` (403): the status of the refusal, 400-599.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Tuple
from urllib.parse import unquote

DEFAULT_DENY_STATUS = 403

# Characters allowed in an HTTP header name (RFC 9110 `token`).
_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
)

# Header values are bytes, as the contract passes them.
JSON_HEADERS = (("content-type", b"application/json"),)

# A client-chosen role is logged, so bound how much of it reaches the logs.
MAX_LOGGED_ROLE_CHARS = 64


def error_body(message: str, code: str) -> bytes:
    """The project's error body: `{"error": message, "code": code}`."""
    return json.dumps({"error": message, "code": code}, separators=(",", ":")).encode()


# The body of every refusal; `code` is stable for clients to match on.
DENY_BODY = error_body("access denied", "forbidden")


class ConfigError(ValueError):
    """A refused config; the message names the offending field."""


@dataclass(frozen=True)
class Rule:
    path_prefix: str
    require_header: str
    allow: Tuple[str, ...]


@dataclass(frozen=True)
class Config:
    rules: Tuple[Rule, ...]
    deny_status: int = DEFAULT_DENY_STATUS


@dataclass(frozen=True)
class Denial:
    """Why a request is refused: what the warn log line records."""

    rule_index: int
    reason: str  # "missing_header" or "role_not_allowed"
    role: str  # the presented values, joined and truncated ("" if none)


# --- config ---------------------------------------------------------------

_TOP_FIELDS = ("rules", "deny_status")
_RULE_FIELDS = ("path_prefix", "require_header", "allow")


def parse_config(text: str) -> Config:
    """Parses and validates the JSON config, or raises ConfigError.

    Validation is strict because a typo in an access-control config
    (`alow`, `"allow": "admin"`) must stop the load rather than silently
    let requests through or lock everyone out.
    """
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"acl config: invalid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError("acl config: must be a JSON object")
    _refuse_unknown(raw, _TOP_FIELDS, "")

    if "rules" not in raw:
        raise ConfigError("rules: required, a list of rules")
    rules = raw["rules"]
    if not isinstance(rules, list):
        raise ConfigError("rules: must be a list of rules")
    parsed = tuple(_parse_rule(r, f"rules[{i}]") for i, r in enumerate(rules))

    status = raw.get("deny_status", DEFAULT_DENY_STATUS)
    # bool is a subclass of int in Python: `true` must not pass as 1.
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        raise ConfigError("deny_status: must be an integer from 400 to 599")
    return Config(rules=parsed, deny_status=status)


def _parse_rule(raw: object, field: str) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{field}: must be an object")
    _refuse_unknown(raw, _RULE_FIELDS, f"{field}.")
    for key in _RULE_FIELDS:
        if key not in raw:
            raise ConfigError(f"{field}.{key}: required")

    prefix = raw["path_prefix"]
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ConfigError(f"{field}.path_prefix: must be a string starting with `/`")
    if "?" in prefix or "#" in prefix:
        raise ConfigError(f"{field}.path_prefix: must not contain `?` or `#`")
    # `/admin/` and `/admin` mean the same subtree.
    if len(prefix) > 1:
        prefix = prefix.rstrip("/") or "/"

    header = raw["require_header"]
    if not isinstance(header, str) or not header or not set(header) <= _TOKEN_CHARS:
        raise ConfigError(f"{field}.require_header: must be an HTTP header name")

    allow = raw["allow"]
    if not isinstance(allow, list) or not all(isinstance(v, str) for v in allow):
        raise ConfigError(f"{field}.allow: must be a list of strings")
    # Values are compared with the trimmed items of the header, so an
    # untrimmed, empty or comma-holding entry could never match.
    allow = tuple(allow)
    if not allow:
        raise ConfigError(f"{field}.allow: must not be empty (the rule would deny everyone)")
    for v in allow:
        if not v or v != v.strip() or "," in v:
            raise ConfigError(
                f"{field}.allow: {v!r} must be non-empty, without commas or surrounding spaces"
            )

    # The host hands header names in lower case.
    return Rule(path_prefix=prefix, require_header=header.lower(), allow=allow)


def _refuse_unknown(raw: dict, known: Tuple[str, ...], field_prefix: str) -> None:
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"{field_prefix}{key}: unknown field (expected one of: {', '.join(known)})"
            )


# --- matching -------------------------------------------------------------


def strip_query(path: str) -> str:
    """The path without its query (or fragment): what is safe to log."""
    for sep in ("?", "#"):
        path = path.split(sep, 1)[0]
    return path


def normalize_path(path: str) -> str:
    """How an upstream may resolve `path`: percent-decoded, backslashes as
    slashes, repeated slashes collapsed, `.` and `..` segments resolved.

    Rules are checked against this view too, so `/%61dmin` or
    `/public/../admin` cannot slip past a rule for `/admin`.
    """
    p = unquote(strip_query(path)).replace("\\", "/")
    # posixpath.normpath keeps a leading `//`; the sidecar's paths start
    # with one `/`, so strip extras before resolving.
    p = "/" + p.lstrip("/")
    p = posixpath.normpath(p)
    return p


def prefix_matches(prefix: str, path: str) -> bool:
    """Whether `path` lies under `prefix` on a segment boundary."""
    if prefix == "/":
        return True
    if not path.startswith(prefix):
        return False
    rest = path[len(prefix):]
    return rest == "" or rest[0] in "/?#"


def find_rule(config: Config, path: str) -> Optional[int]:
    """The index of the first rule matching `path`, or None.

    A rule matches if it matches either the path as sent or its normalized
    form: whichever way the upstream reads the path, a protected one is
    checked (over-matching only ever denies more, never less).
    """
    views = (path, normalize_path(path))
    for i, rule in enumerate(config.rules):
        if any(prefix_matches(rule.path_prefix, v) for v in views):
            return i
    return None


def header_items(values: Iterable[bytes]) -> List[str]:
    """The items of a header's values: split on commas, trimmed, empties
    dropped (`x-role: a, b` + `x-role: c` -> [a, b, c]).

    Values are bytes, as on the wire. Bytes that are not UTF-8 are kept as
    surrogate escapes (`\\udcff` for 0xff): such an item can never equal
    an allow entry (see `_grants`), but it was presented, so the denial says
    `role_not_allowed` and the log shows it.
    """
    items = []
    for value in values:
        text = value.decode("utf-8", "surrogateescape")
        items.extend(v.strip() for v in text.split(","))
    return [v for v in items if v]


def _grants(item: str, allow: Tuple[str, ...]) -> bool:
    # JSON can spell a lone surrogate (`"\\udcff"`) in an allow entry; it
    # must not match the escape of a byte that is not UTF-8.
    return item in allow and not any("\udc80" <= c <= "\udcff" for c in item)


def _loggable(text: str) -> str:
    """`text` with the escapes of non-UTF-8 bytes shown as U+FFFD, so that it
    can be sent to the host as a string."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def decide(
    config: Config, path: str, values_of: Callable[[str], Iterable[bytes]]
) -> Optional[Denial]:
    """None if the request may go on, else why it is denied.

    `values_of(name)` returns every value of the request's header `name`
    (the host's `req.header`); it is called at most once, and only when a
    rule matches, so a request no rule covers costs no header copy.
    """
    index = find_rule(config, path)
    if index is None:
        return None
    rule = config.rules[index]
    items = header_items(values_of(rule.require_header))
    if any(_grants(v, rule.allow) for v in items):
        return None
    reason = "role_not_allowed" if items else "missing_header"
    role = _loggable(",".join(items))[:MAX_LOGGED_ROLE_CHARS]
    return Denial(rule_index=index, reason=reason, role=role)


def evaluate(
    config: Config, path: str, headers: Iterable[Tuple[str, bytes]]
) -> Optional[Denial]:
    """`decide` over a list of (lower-case name, value) pairs."""
    headers = list(headers)
    return decide(config, path, lambda name: [v for n, v in headers if n == name])
