"""`acl` policy: header-based access control, written in Python.

Glue between the WIT world `policy` of `sidecar:policy@0.2.0`
(../../wit/policy.wit) and the pure logic in `acl_logic` (which is tested
natively, without wasm). componentize-py generates the `wit_world` and
`componentize_py_types` modules at build time; they exist only inside the
component.

Lifecycle: the host calls `configure` once per load and snapshots the
instance, so every request's fresh instance starts with `_config` already
set. A host that cannot snapshot calls `configure` at the start of each
instance instead; parsing is the same either way.

The policy only reads the request head: `configure` asks for no other hook
(no `on-response`, no `on-complete`) and it never reads a body, so bodies
stream past it.
"""

import acl_logic
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
            _config = acl_logic.parse_config(config)
        except acl_logic.ConfigError as e:
            # Raising Err is how componentize-py returns `err(message)`.
            raise Err(str(e))
        # `Hooks(0)`: the empty set of flags, only `on-request` is called.
        return Hooks(0)

    def on_request(self, req: Request) -> Decision:
        if _config is None:
            # The host always configures first; fail closed if it did not.
            body = acl_logic.error_body("acl policy is not configured", "policy_not_configured")
            return Decision_Respond(_json_reply(500, body))
        # `path()` comes without the query, so the query (which may carry
        # secrets) is never matched on nor logged. Only the header a rule
        # names is copied out of the host, and only if a rule matches.
        path = req.path()
        denial = acl_logic.decide(_config, path, req.header)
        if denial is None:
            return Decision_Continue()
        fields = [
            _str("path", path),
            _str("method", req.method()),
            log.Field("rule", log.Value_Int(denial.rule_index)),
            _str("reason", denial.reason),
        ]
        if denial.role:
            # The only header value ever logged: the role presented.
            fields.append(_str("role", denial.role))
        log.emit(log.Level.WARN, "acl denied", fields)
        return Decision_Respond(_json_reply(_config.deny_status, acl_logic.DENY_BODY))

    # Never called: `configure` does not ask for these hooks. The bindings
    # declare them abstract, so they must exist.
    def on_response(self, req: Request, resp: Response) -> None:
        pass

    def on_complete(self, req: Request, resp: Response, info: Completion) -> None:
        pass


def _str(key: str, value: str) -> log.Field:
    return log.Field(key, log.Value_Str(value))


def _json_reply(status: int, body: bytes) -> Reply:
    return Reply(
        status=status,
        headers=[Header(n, v) for n, v in acl_logic.JSON_HEADERS],
        body=body,
    )
