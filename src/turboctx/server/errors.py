"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}}, and the handlers
that turn every failure (bad JSON, bad fields, engine validation, auth, size) into one."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from turboctx.errors import InvalidRequestError, OutOfCacheError, PromptTooLongError

log = logging.getLogger("turboctx.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable", 500: "internal_error"}


class APIError(Exception):
    """Raised by the serving code; becomes an OpenAI-style error response."""

    def __init__(self, message: str, status: int = 400, *, param: str | None = None,
                 code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error")


def error_body(message: str, status: int = 400, *, param: str | None = None,
               code: str | None = None, type: str | None = None) -> dict:
    return {"error": {"message": message, "type": type or _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(message: str, status: int = 400, **kw) -> JSONResponse:
    return JSONResponse(error_body(message, status, **kw), status_code=status)


def from_engine_error(e: Exception, prompt_param: str = "prompt") -> APIError:
    """An engine validation error (InvalidRequestError & co.) as a 400 APIError."""
    if isinstance(e, PromptTooLongError):
        param = prompt_param if e.prompt_len >= e.max_model_len else "max_tokens"
        return APIError(str(e), 400, param=param, code="context_length_exceeded")
    if isinstance(e, OutOfCacheError):
        return APIError(str(e), 400, code="kv_cache_too_small")
    return APIError(str(e), 400, param=_param_of(str(e)))


def _param_of(message: str) -> str | None:
    head = message.split("=", 1)[0].strip()
    return head if head.isidentifier() and "=" in message else None


def _loc(loc) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "invalid request", None
    first = errs[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    msgs = []
    for e in errs[:5]:
        where = _loc(e.get("loc", ())) or "body"
        if e.get("type") == "extra_forbidden":
            msgs.append(f"{where}: this server does not know the field {where.rsplit('.', 1)[-1]!r}; "
                        f"remove it (docs/SERVING.md lists the fields served)")
            continue
        got = e.get("input")
        got_s = "" if e.get("type") == "missing" else f" (got {str(got)[:60]!r})"
        msgs.append(f"{where}: {e.get('msg')}{got_s}")
    more = f" (+{len(errs) - 5} more)" if len(errs) > 5 else ""
    return "; ".join(msgs) + more, _loc(first.get("loc", ()))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc.message, exc.status, param=exc.param, code=exc.code, type=exc.type)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        msg, param = validation_message(exc)
        return error_response(msg, 400, param=param)

    @app.exception_handler(InvalidRequestError)
    async def _invalid(_: Request, exc: InvalidRequestError):
        e = from_engine_error(exc)
        return error_response(e.message, e.status, param=e.param, code=e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(msg, exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        log.exception("internal error")
        return error_response(f"internal error: {type(exc).__name__}", 500)
