"""turboctx: long-context LLM inference (chunked prefill, Dual Chunk Attention, sparse prefill)."""
from turboctx.config import EngineConfig
from turboctx.engine import LLM, RequestMetrics, RequestOutput, SamplingParams
from turboctx.errors import (InvalidRequestError, ModelLoadError, PromptTooLongError,
                             TurboctxError, UnsupportedModelError)

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "EngineConfig", "RequestOutput", "RequestMetrics", "TurboctxError",
           "ModelLoadError", "UnsupportedModelError", "InvalidRequestError", "PromptTooLongError"]
