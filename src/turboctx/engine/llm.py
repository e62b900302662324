"""The Python API: `LLM(...).generate(prompts, SamplingParams(...))`, vLLM-style."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

from turboctx.config import EngineConfig
from turboctx.engine.llm_engine import LLMEngine
from turboctx.engine.outputs import RequestOutput
from turboctx.engine.sampling_params import SamplingParams
from turboctx.errors import InvalidRequestError

PROGRESS_MIN_TOKENS = 16384   # show a prefill progress bar on a terminal above this many tokens

Prompt = str | list[int]


class LLM:
    """A model ready to generate.

    model: a local HF folder, a .gguf file, None (the default model) or "random:<preset>".
    Engine options by name, vLLM's where vLLM has the concept: device, dtype, max_model_len,
    max_num_batched_tokens, max_num_seqs, enable_prefix_caching, gpu_memory_utilization,
    tensor_parallel_size, enforce_eager, attention ("dense" | "sparse" | "auto"), dca,
    sparse_threshold, ... (`turboctx.config.ENGINE_OPTIONS` lists them all with their help).
    Every option is checked before anything is loaded: an unknown name is an error naming the
    closest known one.

    With tensor_parallel_size > 1 the LLM owns worker processes: `shutdown()` (or leaving a
    `with LLM(...) as llm:` block) stops them; so do garbage collection and interpreter exit.
    """

    def __init__(self, model: str | None = None, *, config: EngineConfig | None = None, **options):
        """config: a whole EngineConfig (from EngineConfig.from_options) instead of options."""
        if config is not None and (model is not None or options):
            raise InvalidRequestError("give an EngineConfig or options, not both")
        self.engine = LLMEngine(config or EngineConfig.from_options(model=model, **options))

    def shutdown(self) -> None:
        """Stops the engine's other tensor-parallel ranks (a no-op with one); idempotent."""
        self.engine.shutdown()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def config(self) -> EngineConfig:
        """The resolved configuration (device, dtype, max_model_len, attention in force)."""
        return self.engine.config

    def get_default_sampling_params(self) -> SamplingParams:
        """What generate() uses without SamplingParams: the model's generation config
        (generation_config.json: temperature, top_p, top_k, min_p, repetition_penalty,
        max_new_tokens) over SamplingParams' defaults; `generation_config="none"` ignores it."""
        return self.engine.default_sampling_params()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def architecture(self):
        return self.engine.architecture
    def generate(self, prompts: Prompt | list[Prompt],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 *, use_tqdm: bool | None = None, chat: bool = False) -> list[RequestOutput]:
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts
                                        and all(isinstance(t, int) for t in prompts)):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise InvalidRequestError("prompts must be a non-empty list of strings or token-id lists")
        params = sampling_params if sampling_params is not None else self.get_default_sampling_params()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidRequestError(f"{len(params)} sampling params for {len(prompts)} prompts")
        eng = self.engine
        reqs = [eng.make_request(p, sp, chat=chat) for p, sp in zip(prompts, params)]  # validate all first
        for r in reqs:
            eng.add_request(r)
        total = sum(r.num_prompt_tokens for r in reqs)
        show = use_tqdm if use_tqdm is not None else (sys.stderr.isatty() and total >= PROGRESS_MIN_TOKENS)
        bar = tqdm(total=total, unit="tok", desc="prefill", disable=not show, smoothing=0.1)
        done: dict[str, RequestOutput] = {}
        try:
            while eng.has_unfinished():
                before = sum(min(r.num_computed_tokens, r.num_prompt_tokens) for r in reqs)
                for out in eng.step():
                    if out.finished:
                        done[out.request_id] = out
                bar.update(sum(min(r.num_computed_tokens, r.num_prompt_tokens) for r in reqs) - before)
        except BaseException:
            for r in reqs:
                eng.abort_request(r.request_id)
            raise
        finally:
            bar.close()
        return [done[r.request_id] for r in reqs]

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None, *,
               chat: bool = False, use_tqdm: bool | None = None):
        """Yields the growing RequestOutput of one prompt after every step that advances it."""
        eng = self.engine
        req = eng.make_request(prompt, sampling_params or self.get_default_sampling_params(), chat=chat)
        eng.add_request(req)
        total = req.num_prompt_tokens
        show = use_tqdm if use_tqdm is not None else (sys.stderr.isatty() and total >= PROGRESS_MIN_TOKENS)
        bar = tqdm(total=total, unit="tok", desc="prefill", disable=not show, smoothing=0.1, leave=False)
        try:
            while not req.finished:
                before = min(req.num_computed_tokens, total)
                outs = [o for o in eng.step() if o.request_id == req.request_id]
                bar.update(min(req.num_computed_tokens, total) - before)
                if outs:
                    bar.close()   # prefill is done once a token arrives
                    yield outs[-1]
        finally:
            bar.close()
            if not req.finished:
                eng.abort_request(req.request_id)

    def keep_context(self, name: str, prompt: Prompt, *, chat: bool = False):
        """Keeps the KV of `prompt` (tokens as generate() makes them with the same `chat`) under
        `name` in host RAM and on disk, for this process or a later one: run a prompt that starts
        with it first. Returns a KeepResult (tokens kept, bytes, tiers written, warnings)."""
        return self.engine.keep_context(name, self._token_ids(prompt, chat))

    def load_context(self, name: str, prompt: Prompt | None = None, *, chat: bool = False):
        """Loads kept context `name` into the prefix cache, so a prompt that starts with it
        computes only the rest. With `prompt`, it is used only if made from exactly that prompt.
        Returns a LoadResult (tier, seconds, warnings) or None when nothing is kept as `name`."""
        ids = self._token_ids(prompt, chat) if prompt is not None else None
        return self.engine.load_context(name, ids)

    def _token_ids(self, prompt: Prompt, chat: bool) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequestError("this model has no tokenizer; give token ids")
            return self.tokenizer.encode(prompt, add_special_tokens=not chat)
        return list(prompt)

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.tokenizer is None:
            raise InvalidRequestError("this model has no tokenizer, so no chat template")
        if not messages:
            raise InvalidRequestError("messages is empty; give at least one message")
        for msg in messages:
            if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
                raise InvalidRequestError(f"each message needs 'role' and 'content', got {msg!r}")
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | None = None, *, use_tqdm: bool | None = None,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """One conversation (a list of {"role", "content"}) or several; the model's chat template applies."""
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        if not convs:
            raise InvalidRequestError("messages is empty; give at least one message")
        prompts = [self.chat_prompt(conv, add_generation_prompt) for conv in convs]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm, chat=True)
