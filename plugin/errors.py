"""One place that turns exceptions into what Docker expects.

* NetworkDriver.* answers {"Err": "..."} and IpamDriver.* answers
  {"Error": "..."} (the wrong key is silently read as success by Docker).
* Operation failures (PyoverlayError) are HTTP 200 with that body, so the
  docker CLI shows `Error response from daemon: remote: <text>`.
* A body that is not valid JSON or misses a required field is HTTP 400 with
  the same shape, naming the field.
* Unknown paths stay 404: Docker reads that as "not implemented".
* Anything else (a bug) is HTTP 500, still in Docker's shape and with a
  message that says what broke, never aiohttp's bare error page.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from pydantic import ValidationError

from pyoverlay.core.errors import PyoverlayError
from pyoverlay.core.metrics import METRICS
from pyoverlay.plugin.handshake import CONTENT_TYPE

log = structlog.get_logger("pyoverlay.plugin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_key(path: str) -> str:
    return "Error" if path.startswith("/IpamDriver.") else "Err"


def describe_validation(method: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "json_invalid":
            parts.append(f"body is not valid JSON ({err['msg']})")
        else:
            parts.append(f"field {where}: {err['msg']}")
    return f"malformed {method} request: " + "; ".join(parts)


def reply(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, content_type=CONTENT_TYPE)


@web.middleware
async def docker_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    method = request.path.lstrip("/")
    key = error_key(request.path)
    started = time.monotonic()
    structlog.contextvars.bind_contextvars(method=method)
    labels = {"method": method}
    try:
        response = await handler(request)
        log.debug("call", ms=round((time.monotonic() - started) * 1000, 1))
        return response
    except ValidationError as exc:
        text = describe_validation(method, exc)
        log.warning("malformed request", error=text)
        METRICS.inc("pyoverlay_call_errors_total", labels)
        return reply({key: text}, status=400)
    except PyoverlayError as exc:
        log.warning("call failed", error=str(exc))
        METRICS.inc("pyoverlay_call_errors_total", labels)
        return reply({key: str(exc)})
    except web.HTTPException:
        raise
    except Exception as exc:  # a bug: say so in Docker's terms, keep serving
        log.exception("internal error", error=repr(exc))
        METRICS.inc("pyoverlay_call_errors_total", labels)
        text = f"internal error in pyoverlay ({type(exc).__name__}: {exc}); see the plugin log"
        return reply({key: text}, status=500)
    finally:
        structlog.contextvars.unbind_contextvars("method")
        if request.match_info.route.resource is not None:  # a known method, not a 404
            METRICS.inc("pyoverlay_calls_total", labels)
            METRICS.observe("pyoverlay_call_seconds", time.monotonic() - started, labels)
