"""What the endpoints share: the server state (engine loop, names, token strings) and text ->
token ids off the event loop."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import lru_cache

from turboctx.server.engine_loop import EngineLoop
from turboctx.server.errors import APIError
from turboctx.server.metrics import ServerMetrics

LONG_TEXT = 20000          # characters; encoding longer texts runs in a worker thread


@dataclass
class ServerState:
    engine_loop: EngineLoop
    model_names: list[str]
    metrics: ServerMetrics
    max_model_len: int = 0
    chat_template: str | None = None          # --chat-template: replaces the model's template
    tool_call_parser: str | None = None       # "hermes" | "llama3_json" | None (from the template)
    token_cache: dict[int, tuple[str, list[int]]] = field(default_factory=dict)

    @property
    def engine(self):
        return self.engine_loop.engine

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.engine.architecture.vocab_size

    def chat_template_text(self) -> str | None:
        """The template chat requests are rendered with: --chat-template's, else the model's."""
        tk = self.tokenizer
        return self.chat_template or (tk.chat_template if tk is not None else None)

    def check_model(self, name: str | None, optional: bool = False) -> None:
        if name is None and optional:
            return
        if name not in self.model_names:
            raise APIError(f"model {name!r} is not served here; available: {', '.join(self.model_names)}",
                           400, param="model", code="model_not_found")

    def token_str(self, tok: int) -> str:
        return self.token_info(tok)[0]

    def token_info(self, tok: int) -> tuple[str, list[int]]:
        """(text, exact UTF-8 bytes) of one token; a token that ends inside a multi-byte character
        has a text with U+FFFD, its bytes stay exact (byte-level BPE vocabularies)."""
        info = self.token_cache.get(tok)
        if info is None:
            info = self.token_cache[tok] = _token_info(self.tokenizer, tok)
        return info


def _token_info(tk, tok: int) -> tuple[str, list[int]]:
    if tk is None:
        return str(tok), list(str(tok).encode())
    text = tk.decode([tok], skip_special_tokens=False)
    piece = tk.id_to_token(tok)
    if piece is not None:
        try:
            raw = bytes(_inverse_bytes()[c] for c in piece)
            if raw.decode("utf-8", errors="replace") == text:
                return text, list(raw)
        except KeyError:
            pass
    return text, list(text.encode())


@lru_cache(maxsize=1)
def _inverse_bytes() -> dict[str, int]:
    from turboctx.tokenizer import _bytes_to_unicode
    return {c: b for b, c in _bytes_to_unicode().items()}


def require_tokenizer(state: ServerState, what: str):
    tk = state.tokenizer
    if tk is None:
        raise APIError(f"this model has no tokenizer; {what}", 400, param="prompt")
    return tk


async def tokenize(state: ServerState, text: str, add_special_tokens: bool) -> list[int]:
    tk = require_tokenizer(state, "send the prompt as a list of token ids")
    if len(text) < LONG_TEXT:
        return tk.encode(text, add_special_tokens=add_special_tokens)
    return await asyncio.to_thread(tk.encode, text, add_special_tokens)


def top_sorted(d: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(d.items(), key=lambda kv: -kv[1])[:k]
