"""SamplingParams: what to generate for one request (vLLM's names and meanings)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from turboctx.errors import InvalidRequestError
from turboctx.structured.params import StructuredOutputsParams

MAX_LOGPROBS = 20


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0        # 0 = greedy
    top_p: float = 1.0              # nucleus mass, in (0, 1]
    top_k: int = -1                 # -1 (or 0) = off
    min_p: float = 0.0              # drop tokens below min_p x the top token's probability
    presence_penalty: float = 0.0   # OpenAI: logit -= p for every token already generated
    frequency_penalty: float = 0.0  # OpenAI: logit -= f x (times the token was generated)
    repetition_penalty: float = 1.0  # HF/CTRL: a prompt or output token's logit /r (>0) or *r (<0)
    min_tokens: int = 0             # EOS and stop_token_ids are masked until this many tokens
    logit_bias: dict[int, float] = field(default_factory=dict)   # token id -> added to its logit
    seed: int | None = None         # per-request RNG seed
    stop: list[str] | str | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None     # top-k logprobs of the full distribution per generated token
    prompt_logprobs: int | None = None  # per prompt position: the actual token + top-k
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured_outputs: StructuredOutputsParams | None = None   # JSON schema, regex, choice, grammar

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1,
               f"max_tokens={self.max_tokens!r} must be an integer >= 1")
        _check(self.temperature >= 0, f"temperature={self.temperature} must be >= 0")
        _check(0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1]")
        _check(0 <= self.min_p <= 1, f"min_p={self.min_p} must be in [0, 1]")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            _check(-2 <= v <= 2, f"{name}={v} must be in [-2, 2]")
        _check(self.repetition_penalty > 0,
               f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")
        _check(isinstance(self.min_tokens, int) and 0 <= self.min_tokens <= self.max_tokens,
               f"min_tokens={self.min_tokens!r} must be an integer in [0, max_tokens={self.max_tokens}]")
        self.logit_bias = dict(self.logit_bias or {})
        _check(all(isinstance(t, int) and t >= 0 and -100 <= b <= 100
                   for t, b in self.logit_bias.items()),
               "logit_bias must map token ids (integers >= 0) to values in [-100, 100]")
        _check(self.seed is None or (isinstance(self.seed, int) and -2**63 <= self.seed < 2**63),
               f"seed={self.seed!r} must be None or an integer in [-2^63, 2^63)")
        _check(isinstance(self.top_k, int) and (self.top_k == -1 or self.top_k >= 0),
               f"top_k={self.top_k!r} must be -1 (off), 0 (off) or a positive integer")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            _check(v is None or (isinstance(v, int) and 0 <= v <= MAX_LOGPROBS),
                   f"{name}={v!r} must be None or an integer in [0, {MAX_LOGPROBS}]")
        _check(self.structured_outputs is None or isinstance(self.structured_outputs,
                                                              StructuredOutputsParams),
               f"structured_outputs must be a StructuredOutputsParams, got "
               f"{type(self.structured_outputs).__name__}")
        _check(all(isinstance(s, str) and s for s in self.stop),
               f"stop={self.stop!r} must be non-empty strings")
        _check(all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
               f"stop_token_ids={self.stop_token_ids!r} must be non-negative integers")

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @property
    def processes_logits(self) -> bool:
        """Penalties or a logit bias change this request's logits before sampling."""
        return self.has_penalties or bool(self.logit_bias)

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @classmethod
    def from_defaults(cls, defaults: dict, **fields_given) -> "SamplingParams":
        """Fields given win; the rest come from `defaults` (a model's generation config), then
        from the dataclass defaults. Unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(fields_given) - known)
        _check(not unknown, f"unknown sampling field(s) {unknown}; known: {sorted(known)}")
        return cls(**{**{k: v for k, v in defaults.items() if k in known}, **fields_given})


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise InvalidRequestError(msg)
