"""The FastAPI app: routes, API-key check, body-size limit, lifespan of the engine loop."""
from __future__ import annotations

import hmac
import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from turboctx.server.engine_loop import EngineLoop
from turboctx.server.errors import error_body, install_error_handlers
from turboctx.server.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from turboctx.server.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                      TokenizeRequest)
from turboctx.server.responses import (ChatCompletionResponse, CompletionResponse, DetokenizeResponse,
                                       ErrorResponse, ModelCard, ModelList, TokenizeResponse,
                                       TokenizerInfo)
from turboctx.server.serving_chat import create_chat_completion
from turboctx.server.serving_common import ServerState
from turboctx.server.serving_completions import create_completion
from turboctx.server.serving_tokenize import create_detokenize, create_tokenize, tokenizer_info

log = logging.getLogger("turboctx.server")
DEFAULT_MAX_BODY_BYTES = 64 << 20     # ~1M tokens as text or token ids fit comfortably
OPEN_PATHS = ("/health",)


class GuardMiddleware:
    """Pure ASGI: Bearer API key on every path but /health, and a request-body size limit
    (checked against Content-Length and against the bytes actually received)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.api_key and scope.get("path") not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(auth.encode(), f"Bearer {self.api_key}".encode()):
                msg = "missing API key: send 'Authorization: Bearer <key>'" if not auth else "invalid API key"
                return await _send_json(send, 401, error_body(msg, 401, code="invalid_api_key"),
                                        [(b"www-authenticate", b"Bearer")])
        limit = self.max_body_bytes
        cl = headers.get(b"content-length")
        if cl is not None:
            try:
                too_big = int(cl) > limit
            except ValueError:
                return await _send_json(send, 400, error_body("invalid Content-Length header", 400))
            if too_big:
                return await _send_json(send, 413, _too_big(limit))
        received = 0

        async def limited_receive():
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_big(limit)["error"]["message"])
            return msg
        await self.app(scope, limited_receive, send)


def _too_big(limit: int) -> dict:
    return error_body(f"request body is larger than the limit of {limit} bytes", 413, code="request_too_large")


async def _send_json(send, status: int, body: dict, extra_headers=()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *extra_headers]})
    await send({"type": "http.response.body", "body": data})


ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
          429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


def create_app(engine_loop: EngineLoop, *, model_names: list[str], api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, metrics: ServerMetrics | None = None,
               stop_engine_on_shutdown: bool = True, chat_template: str | None = None,
               tool_call_parser: str | None = None) -> FastAPI:
    metrics = metrics or engine_loop.metrics or ServerMetrics()
    engine_loop.metrics = metrics
    metrics.bind(engine_loop)
    state = ServerState(engine_loop, list(model_names), metrics,
                        max_model_len=engine_loop.engine.config.max_model_len,
                        chat_template=chat_template, tool_call_parser=tool_call_parser)

    @asynccontextmanager
    async def lifespan(_app):
        engine_loop.start()
        yield
        if stop_engine_on_shutdown:
            engine_loop.stop()

    app = FastAPI(title="turboctx", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API of the turboctx long-context engine")
    app.state.server = state
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={
        **ERRORS, 200: {"content": {"text/event-stream": {}}}})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await create_chat_completion(state, body, request)

    @app.post("/v1/completions", response_model=CompletionResponse, responses={
        **ERRORS, 200: {"content": {"text/event-stream": {}}}})
    async def completions(body: CompletionRequest, request: Request):
        return await create_completion(state, body, request)

    @app.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS)
    async def tokenize(body: TokenizeRequest):
        return await create_tokenize(state, body)

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
    async def detokenize(body: DetokenizeRequest):
        return await create_detokenize(state, body)

    @app.get("/tokenizer_info", response_model=TokenizerInfo, responses=ERRORS)
    async def get_tokenizer_info():
        return tokenizer_info(state)

    @app.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}})
    async def models():
        return ModelList(data=[ModelCard(id=n, max_model_len=state.max_model_len) for n in state.model_names])

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health():
        if not engine_loop.alive or engine_loop.draining:
            why = "shutting down" if engine_loop.draining else f"engine not running ({engine_loop.error})"
            return Response(json.dumps(error_body(why, 503)), status_code=503, media_type="application/json")
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response, responses={401: {"model": ErrorResponse}})
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
