"""A server's own tokenizer through its `POST /tokenize`, in vLLM's shape:
request {"model": NAME, "prompt": TEXT, "add_special_tokens": true}, response {"count": N,
"max_model_len": M, "tokens": [ids...]}; a server without it answers 404.

Length fitting counts with it what the server will see: the served model's tokens of the full
prompt, special tokens included, as /v1/completions encodes a prompt string. Each count is one
request, so counts are cached by the text's digest (a binary search probes some texts twice).
"""
from __future__ import annotations

import hashlib
import threading
from typing import Callable

from turboctx.eval.errors import TargetUnavailable, TokenizerUnavailable

CACHE_SIZE = 4096   # counts kept (a digest and an int each)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def tokenize_urls(base_url: str) -> list[str]:
    """Where /tokenize may be: at the server's root (as vLLM serves it), then beside the
    OpenAI routes (base_url/tokenize)."""
    base = base_url.rstrip("/")
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    return list(dict.fromkeys([root + "/tokenize", base + "/tokenize"]))


class ServerTokenizer:
    """count(text) and token_ids(text) from the server at base_url; `available` says whether
    it has /tokenize at all (probed once, on first use)."""

    def __init__(self, base_url: str, api_key: str | None, model: Callable[[], str],
                 timeout: float = 600.0):
        import httpx
        self._httpx = httpx
        self.base_url = base_url
        self._model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)
        self._url: str | None = None
        self._probed = False
        self._counts: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self.requests = 0           # how many /tokenize requests were sent (tests, progress)

    @property
    def available(self) -> bool:
        if not self._probed:
            self._tokenize("a", add_special_tokens=True, probing=True)
        return self._url is not None

    def count(self, text: str) -> int:
        """Tokens of `text` as the server encodes a completion prompt (special tokens in)."""
        key = _digest(text)
        with self._lock:
            if key in self._counts:
                return self._counts[key]
        n = int(self.require()._tokenize(text, add_special_tokens=True)["count"])
        with self._lock:
            if len(self._counts) >= CACHE_SIZE:
                self._counts.pop(next(iter(self._counts)))
            self._counts[key] = n
        return n

    def token_ids(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [int(t) for t in self.require()._tokenize(text, add_special_tokens)["tokens"]]

    def require(self) -> "ServerTokenizer":
        """Itself, when the server has /tokenize; else TokenizerUnavailable naming --tokenizer."""
        if not self.available:
            raise TokenizerUnavailable(
                f"the server at {self.base_url} has no /tokenize (404), so the served model's "
                "tokens cannot be counted here: pass --tokenizer SPEC, the served model's "
                "tokenizer (its HF folder or .gguf file)")
        return self

    def _tokenize(self, text: str, add_special_tokens: bool, probing: bool = False) -> dict:
        body = {"model": self._model(), "prompt": text, "add_special_tokens": add_special_tokens}
        urls = tokenize_urls(self.base_url) if probing or self._url is None else [self._url]
        for url in urls:
            try:
                r = self._client.post(url, json=body)
            except self._httpx.HTTPError as e:
                raise TargetUnavailable(f"cannot reach {url}: {e}") from e
            self.requests += 1
            if r.status_code in (404, 405) and probing:
                continue
            if r.status_code != 200:
                raise TargetUnavailable(f"{url} answered {r.status_code}: {r.text[:300]}")
            try:
                out = r.json()
                int(out["count"])
            except (ValueError, KeyError, TypeError) as e:
                raise TargetUnavailable(f"{url} answered without a token count ({e}): "
                                        f"{r.text[:300]}") from e
            self._url, self._probed = url, True
            return out
        self._probed = True
        return {}
