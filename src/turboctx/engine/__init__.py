from turboctx.engine.llm import LLM
from turboctx.engine.outputs import RequestMetrics, RequestOutput
from turboctx.engine.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "RequestMetrics"]
