"""Targets: what the harness talks to. The local engine, or any OpenAI-compatible server.

A Target answers three questions: how many tokens is this prompt (for length fitting, counted
as the model sees it: special tokens included, as a prompt string is encoded for generation),
what does the model reply to these prompts (greedy), and what are the log-probabilities of these
tokens (for perplexity). The prompt text, chat template included, is built on this side for
every target, so a remote run sends the text a local run gives the engine.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, Sequence, runtime_checkable

from turboctx.eval.errors import (PromptTooLong, TargetUnavailable, TokenizerMismatch,
                                  TokenizerUnavailable)
from turboctx.eval.server_tokenizer import ServerTokenizer

__all__ = ["LocalTarget", "OpenAITarget", "PromptTooLong", "Target", "TargetUnavailable",
           "TokenizerMismatch", "TokenizerMixin", "TokenizerUnavailable", "load_tokenizer"]


@runtime_checkable
class Target(Protocol):
    name: str
    batch_size: int

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompts: Sequence[str], max_tokens: int) -> list[str | Exception]: ...

    def token_logprobs(self, ids: Sequence[int]) -> list[float]:
        """len(ids) - 1 values: log p(ids[j] | ids[:j]) for j = 1 .. len(ids) - 1."""
        ...


def chat_prompt(tokenizer: Any, body: str) -> str:
    """The tokenizer's chat template around one user turn, ending with the assistant header."""
    msgs = [{"role": "user", "content": body}]
    try:
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
    except TypeError:
        return tokenizer.apply_chat_template(msgs)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """A prompt string's token ids as the engine and /v1/completions encode it: with the
    tokenizer's special tokens (a BOS where the model adds one)."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=True))
    except TypeError:   # a tokenizer without the flag (a stand-in): it adds none
        return list(tokenizer.encode(text))


class TokenizerMixin:
    """count_tokens / encode / wrap over a tokenizer with encode(text) -> ids (and
    apply_chat_template)."""

    tokenizer: Any

    def count_tokens(self, text: str) -> int:
        return len(encode_prompt(self.tokenizer, text))

    def encode(self, text: str) -> list[int]:
        """Token ids of running text (no special tokens): perplexity windows."""
        return list(self.tokenizer.encode(text))

    def wrap(self, body: str, answer_prefix: str = "", chat: bool = False) -> str:
        """The prompt text for a task body: the chat template (chat) + the answer prefix, which
        so sits after the assistant header, as RULER puts it."""
        if chat:
            return chat_prompt(self.tokenizer, body) + answer_prefix
        return body + answer_prefix


def load_tokenizer(spec: str | None) -> Any:
    """A tokenizer by model spec, through the engine's checkpoint loader (None = default model)."""
    try:
        from turboctx.weights import open_checkpoint
    except ImportError as e:  # pragma: no cover - depends on the engine being there
        raise RuntimeError(f"--tokenizer needs turboctx.weights.open_checkpoint ({e})") from e
    return open_checkpoint(spec).tokenizer


class LocalTarget(TokenizerMixin):
    """The in-process engine, created lazily from a model spec and engine flags."""

    def __init__(self, model: str | None = None, batch_size: int = 1, **options: Any):
        """options: engine options, checked now (the engine itself is built on first use)."""
        from turboctx.config import EngineConfig
        self.config = EngineConfig.from_options(model=model, **options)
        self.batch_size = batch_size
        self._llm = None
        flags = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
        self.name = f"local:{model or 'default'}" + (f"[{flags}]" if flags else "")

    @property
    def llm(self):
        if self._llm is None:
            from turboctx import LLM
            self._llm = LLM(config=self.config)
        return self._llm

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    def close(self) -> None:
        """Frees the engine (its KV cache takes most of a GPU): the next call builds it again."""
        if self._llm is None:
            return
        self._llm = None
        import gc

        import torch
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def max_model_len(self) -> int:
        return self.llm.config.max_model_len

    def generate(self, prompts: Sequence[str], max_tokens: int) -> list[str | Exception]:
        from turboctx import SamplingParams
        limit = self.max_model_len
        results: list[str | Exception] = [None] * len(prompts)  # type: ignore[list-item]
        todo = []
        for i, p in enumerate(prompts):
            n = self.count_tokens(p)
            if limit is not None and n + max_tokens > limit:
                results[i] = PromptTooLong(f"{n} prompt tokens + {max_tokens} > max_model_len {limit}")
            else:
                todo.append(i)
        if todo:
            params = SamplingParams(max_tokens=max_tokens, temperature=0)
            try:
                outs = self.llm.generate([prompts[i] for i in todo], params)
                for i, o in zip(todo, outs):
                    results[i] = o.text
            except Exception as e:  # the engine rejects a whole batch: find the culprit(s)
                if len(todo) == 1:
                    results[todo[0]] = e
                else:
                    for i in todo:
                        results[i] = self.generate([prompts[i]], max_tokens)[0]
        return results

    def token_logprobs(self, ids: Sequence[int]) -> list[float]:
        from turboctx import SamplingParams
        out = self.llm.generate([list(ids)], SamplingParams(max_tokens=1, temperature=0,
                                                            prompt_logprobs=0))[0]
        lps = out.prompt_logprobs
        return [float(lps[j][ids[j]]) for j in range(1, len(ids))]


class OpenAITarget(TokenizerMixin):
    """Any OpenAI-compatible server, through /v1/completions.

    Prompts arrive here whole (a chat template already rendered with the served model's
    tokenizer, the answer prefix after the assistant header), so the server sees the very text
    a local run gives the engine. Tokens are counted by the server's /tokenize, or by
    `tokenizer` (the served model's, --tokenizer) when given: then the length search runs
    locally and confirm_prompt_tokens checks each finished prompt once against the server.
    Never another model's tokenizer by default: with neither, counting raises
    TokenizerUnavailable.
    """

    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None,
                 concurrency: int = 4, tokenizer: Any = None, timeout: float = 3600.0):
        import openai
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY",
                                    timeout=timeout, max_retries=1)
        self.base_url = base_url
        self.batch_size = max(1, concurrency)
        self.local_tokenizer = tokenizer
        self.server_tokenizer = ServerTokenizer(base_url, api_key, lambda: self.model,
                                                timeout=min(timeout, 600.0))
        self._model = model
        self._lock = threading.Lock()
        self.name = f"openai:{base_url}"

    @property
    def tokenizer(self):
        if self.local_tokenizer is None:
            raise TokenizerUnavailable(
                "a chat template is rendered here, with the served model's tokenizer: pass "
                "--tokenizer SPEC (the served model's HF folder or .gguf file)")
        return self.local_tokenizer

    def count_tokens(self, text: str) -> int:
        if self.local_tokenizer is not None:
            return super().count_tokens(text)
        return self.server_tokenizer.count(text)

    def encode(self, text: str) -> list[int]:
        if self.local_tokenizer is not None:
            return super().encode(text)
        return self.server_tokenizer.token_ids(text, add_special_tokens=False)

    def confirm_prompt_tokens(self, samples: Sequence[Any]) -> int:
        """With a local tokenizer, each prompt's token count must equal the server's (one
        /tokenize request per prompt); raises TokenizerMismatch at the first that differs.
        Returns how many prompts were checked: 0 when the server has no /tokenize or the
        counts came from it anyway."""
        if self.local_tokenizer is None or not self.server_tokenizer.available:
            return 0
        for s in samples:
            mine = s.prompt_tokens if s.prompt_tokens is not None else self.count_tokens(s.prompt)
            theirs = self.server_tokenizer.count(s.prompt)
            if mine != theirs:
                raise TokenizerMismatch(
                    f"--tokenizer counts {mine} tokens in the prompt {s.key} where the server "
                    f"(its /tokenize) counts {theirs}: it is not the served model's tokenizer. "
                    "Pass the served model's, or leave --tokenizer out to count through the "
                    "server (a chat template needs it, though)")
        return len(samples)

    @property
    def model(self) -> str:
        with self._lock:
            if self._model is None:
                try:
                    models = self.client.models.list().data
                except self._openai.APIConnectionError as e:
                    raise TargetUnavailable(
                        f"cannot reach the OpenAI-compatible server at {self.base_url}: {e}. "
                        "Is it running (e.g. `turboctx serve`)?") from e
                if not models:
                    raise TargetUnavailable(f"{self.base_url} lists no models; pass --served-model")
                self._model = models[0].id
            return self._model

    def _one(self, prompt: str, max_tokens: int) -> str | Exception:
        oa = self._openai
        try:
            r = self.client.completions.create(model=self.model, prompt=prompt,
                                               max_tokens=max_tokens, temperature=0)
            return r.choices[0].text
        except oa.APIConnectionError as e:
            raise TargetUnavailable(f"lost the server at {self.base_url}: {e}") from e
        except oa.BadRequestError as e:  # typically: prompt over the context limit
            msg = str(e)
            if any(w in msg.lower() for w in ("context", "too long", "maximum", "length")):
                return PromptTooLong(msg)
            return e
        except oa.APIError as e:
            return e

    def generate(self, prompts: Sequence[str], max_tokens: int) -> list[str | Exception]:
        _ = self.model  # fail fast and clearly when the server is down
        if len(prompts) == 1:
            return [self._one(prompts[0], max_tokens)]
        with ThreadPoolExecutor(self.batch_size) as pool:
            return list(pool.map(lambda p: self._one(p, max_tokens), prompts))

    def token_logprobs(self, ids: Sequence[int]) -> list[float]:
        # vLLM-style echo: logprobs of the prompt tokens themselves, no new token.
        try:
            r = self.client.completions.create(model=self.model, prompt=list(ids), max_tokens=1,
                                               temperature=0, echo=True, logprobs=0)
        except self._openai.APIConnectionError as e:
            raise TargetUnavailable(f"cannot reach {self.base_url}: {e}") from e
        lps = r.choices[0].logprobs.token_logprobs[: len(ids)]
        return [float(x) if x is not None else math.nan for x in lps[1:]]
