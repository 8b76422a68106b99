"""The decisions of the `template` policy, in plain Python.

This module imports only the standard library, never the bindings that
componentize-py generates, so `python3 -m unittest` tests it natively;
`app.py` connects it to the contract.

Config: {"header": "x-api-key", "status": 401} (`status` optional): every
request must carry `header`, or it is refused with `status` and a JSON body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

DEFAULT_STATUS = 401

_FIELDS = ("header", "status")

# Header values are bytes, as the contract passes them.
JSON_HEADERS = (("content-type", b"application/json"),)


class ConfigError(ValueError):
    """A refused config; the message names the field at fault."""


@dataclass(frozen=True)
class Config:
    header: str
    status: int = DEFAULT_STATUS


def parse_config(text: str) -> Config:
    """Parses and checks the config (the JSON text `configure` receives)."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"config: not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError("config: must be a JSON object")
    # A typo (`heder`) must stop the load, not be ignored.
    for key in raw:
        if key not in _FIELDS:
            raise ConfigError(f"{key}: unknown field (expected one of: {', '.join(_FIELDS)})")
    header = raw.get("header")
    if not isinstance(header, str):
        raise ConfigError("header: required, a header name")
    if not header:
        raise ConfigError("header: must not be empty")
    status = raw.get("status", DEFAULT_STATUS)
    # bool is a subclass of int in Python: `true` must not pass as 1.
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        raise ConfigError(f"status: {json.dumps(status)} is not an error status (400-599)")
    # The host hands header names in lower case.
    return Config(header=header.lower(), status=status)


def decide(config: Config, header_values: Sequence[bytes]) -> Optional[Tuple[int, bytes]]:
    """What to do with a request, given the values of the configured header
    (bytes, as on the wire; empty when the request lacks it). None lets it
    through; `(status, body)` refuses it."""
    if header_values:
        return None
    body = json.dumps(
        {"error": f"missing header `{config.header}`", "code": "missing_header"},
        separators=(",", ":"),
    )
    return config.status, body.encode()
