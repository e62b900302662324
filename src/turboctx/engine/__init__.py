from turboctx.engine.llm import LLM
from turboctx.engine.llm_engine import LLMEngine
from turboctx.engine.outputs import RequestMetrics, RequestOutput
from turboctx.engine.sampling_params import SamplingParams

__all__ = ["LLM", "LLMEngine", "SamplingParams", "RequestOutput", "RequestMetrics"]
