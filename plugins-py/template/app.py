"""The `template` policy: glue between the contract (wit/policy.wit, world
`policy`) and the logic in `template_logic` (tested natively, without wasm).
componentize-py generates the `wit_world` and `componentize_py_types`
modules while it builds; they exist only inside the component.

How componentize-py maps the contract to Python:
- `configure -> result<hooks, string>`: return `Hooks(0)` (no hook besides
  `on-request`), `Hooks.ON_RESPONSE`, `Hooks.ON_RESPONSE | Hooks.ON_COMPLETE`;
  `raise Err("message")` refuses the config.
- `decision`: `Decision_Continue()` or `Decision_Respond(Reply(status,
  [Header(name, b"value")], b"body"))`.
- `borrow<request>`: `req.path()`, `req.header("x-api-key")` (a
  `list[bytes]`), `req.set_header(name, b"value")`, which raises `Err` if
  the host refuses it. Valid only during the call: never keep it.
- All four hooks must be defined, even those `configure` never asks for.

Lifecycle: the sidecar calls `configure` once per load and snapshots the
configured instance; every request's instance starts from that snapshot,
so `_config` is set for every request.
"""

import template_logic
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log
from wit_world.imports.types import (
    Completion,
    Decision,
    Decision_Continue,
    Decision_Respond,
    Header,
    Hooks,
    Reply,
    Request,
    Response,
)

# Set by `configure`; a module global so that it is part of the snapshot.
_config = None


class Handler(exports.Handler):
    def configure(self, config: str) -> Hooks:
        global _config
        try:
            _config = template_logic.parse_config(config)
        except template_logic.ConfigError as e:
            # `err(message)`: the sidecar refuses the config with it and
            # keeps serving with what it had.
            raise Err(str(e))
        # Only `on-request` is needed.
        return Hooks(0)

    def on_request(self, req: Request) -> Decision:
        if _config is None:
            # The host always configures first; fail closed if it did not.
            return Decision_Respond(
                _reply(500, b'{"error":"policy not configured","code":"policy_not_configured"}')
            )
        # One header, not the whole request; the body is never read, so it
        # streams upstream untouched (`req.body(max_bytes)` would buffer it).
        refusal = template_logic.decide(_config, req.header(_config.header))
        if refusal is None:
            return Decision_Continue()
        status, body = refusal
        log.emit(
            log.Level.WARN,
            "request refused",
            [log.Field("missing_header", log.Value_Str(_config.header))],
        )
        return Decision_Respond(_reply(status, body))

    # Never called: `configure` does not ask for these hooks. The bindings
    # declare them abstract, so they must exist.
    def on_response(self, req: Request, resp: Response) -> None:
        pass

    def on_complete(self, req: Request, resp: Response, info: Completion) -> None:
        pass


def _reply(status: int, body: bytes) -> Reply:
    return Reply(
        status=status,
        headers=[Header(n, v) for n, v in template_logic.JSON_HEADERS],
        body=body,
    )
