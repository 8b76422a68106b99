"""`acl` policy: header-based access control, written in Python.

Glue between the WIT world `policy` (../../wit) and the pure logic in
`acl_logic` (which is tested natively, without wasm). componentize-py
generates the `wit_world` and `componentize_py_types` modules at build
time; they exist only inside the component.

The host makes a fresh instance per request and calls `configure` first,
so the parsed config in the module global below is always this request's.
"""

import acl_logic
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log
from wit_world.imports.types import (
    Decision,
    Decision_Continue,
    Decision_Respond,
    Header,
    Request,
    Response,
)

# Set by `configure`, which runs at the start of every (fresh) instance.
_config = None


class Handler(exports.Handler):
    def configure(self, config: str) -> None:
        global _config
        try:
            _config = acl_logic.parse_config(config)
        except acl_logic.ConfigError as e:
            # Raising Err is how componentize-py returns `err(message)`.
            raise Err(str(e))

    def on_request(self, req: Request) -> Decision:
        if _config is None:
            # The host always configures first; fail closed if it did not.
            body = acl_logic.error_body("acl policy is not configured", "policy_not_configured")
            return Decision_Respond(_json_response(500, body))
        headers = ((h.name, h.value) for h in req.headers)
        denial = acl_logic.evaluate(_config, req.path, headers)
        if denial is None:
            # `none`: the request is unchanged, which is cheaper for the host.
            return Decision_Continue(None)
        fields = [
            # The query may carry secrets; the path is enough.
            _str("path", acl_logic.strip_query(req.path)),
            _str("method", req.method),
            log.Field("rule", log.Value_Int(denial.rule_index)),
            _str("reason", denial.reason),
        ]
        if denial.role:
            # The only header value ever logged: the role presented.
            fields.append(_str("role", denial.role))
        log.emit(log.Level.WARN, "acl denied", fields)
        return Decision_Respond(_json_response(_config.deny_status, acl_logic.DENY_BODY))

    def on_response(self, req: Request, resp: Response) -> Response:
        return resp


def _str(key: str, value: str) -> log.Field:
    return log.Field(key, log.Value_Str(value))


def _json_response(status: int, body: bytes) -> Response:
    return Response(
        status=status,
        headers=[Header(n, v) for n, v in acl_logic.JSON_HEADERS],
        body=body,
    )
