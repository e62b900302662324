"""The plan of `turboctx ask` / `turboctx chat` before any weight is loaded: tokens per document
and in all, whether they fit (max_model_len, memory), the estimated time to first token and its
cost. The engine's own figures come from turboctx.engine.plan.memory_plan (config only)."""
from __future__ import annotations

from dataclasses import dataclass

from turboctx.bench.rates import architecture_key, device_name, load_rates, matching_rates
from turboctx.config import EngineConfig
from turboctx.config.architecture import ModelArchitecture
from turboctx.documents.document import SkippedFile
from turboctx.documents.estimate import PrefillEstimate, estimate_prefill
from turboctx.documents.fit import FitCheck, Limits, check_fit
from turboctx.documents.prompt import DocumentPrompt


@dataclass(frozen=True)
class DocumentCount:
    name: str
    kind: str               # text | pdf | stdin
    tokens: int


@dataclass(frozen=True)
class DocumentPlan:
    documents: list[DocumentCount]
    skipped: list[SkippedFile]
    template_tokens: int    # the chat template (and the question, when known)
    prompt_tokens: int      # len(prompt_ids); with no question yet (chat), len(prefix_ids)
    question_known: bool
    engine: dict            # memory_plan's figures: model, device, dtype, attention, ...
    fit: FitCheck
    estimate: PrefillEstimate
    price_per_gpu_hour: float | None
    gpus: int               # tensor_parallel_size: a cost counts every GPU

    @property
    def cost_usd(self) -> float | None:
        """Estimated cost of the prefill: TTFT hours x price per GPU-hour x GPUs."""
        if self.price_per_gpu_hour is None:
            return None
        return self.estimate.ttft_s / 3600 * self.price_per_gpu_hour * self.gpus


def make_plan(config: EngineConfig, architecture: ModelArchitecture, prompt: DocumentPrompt,
              kinds: list[str], skipped: list[SkippedFile], max_tokens: int,
              price_per_gpu_hour: float | None = None, question_known: bool = True) -> DocumentPlan:
    """kinds: each document's kind, in prompt order. Reads the model's config (memory_plan) and
    the stored prefill rates; loads no weights."""
    import torch

    from turboctx.engine.plan import memory_plan
    engine = memory_plan(config)
    device = torch.device(engine["device"])
    tp = config.parallel.tensor_parallel_size
    limits = Limits(max_model_len=engine["max_model_len"],
                    tokens_that_fit=config.cache.kv_cache_tokens or engine["max tokens that fit"],
                    trained_context=engine["trained context"],
                    kv_bytes_per_token=engine["KV bytes per token"], device_type=device.type,
                    dtype=engine["dtype"], dca="dca" in engine["attention"],
                    gpu_memory_utilization=config.cache.gpu_memory_utilization)
    tokens = len(prompt.prompt_ids) if question_known else len(prompt.prefix_ids)
    rates = matching_rates(load_rates(), device=device_name(device), model=engine["model"],
                           architecture=architecture_key(architecture), attention=engine["attention"],
                           dtype=engine["dtype"], tensor_parallel_size=tp)
    counts = [DocumentCount(name, kind, n) for name, kind, n in
              zip(prompt.document_names, kinds, prompt.per_document_tokens)]
    return DocumentPlan(documents=counts, skipped=list(skipped),
                        template_tokens=tokens - prompt.document_tokens, prompt_tokens=tokens,
                        question_known=question_known, engine=engine,
                        fit=check_fit(tokens, max_tokens, limits),
                        estimate=estimate_prefill(architecture, tokens, device.type, tp, rates),
                        price_per_gpu_hour=price_per_gpu_hour, gpus=tp)
