"""The inference engine: continuous batching over a paged KV cache with prefix caching.

Follow one request: `LLM.generate` / `AsyncLLM.generate` (frontend.py: tokenize, check)
-> client.py (to the engine-core process) -> core.py `EngineCore.step`: scheduler.py picks
the tokens, model_runner.py computes them through attention.py over the paged cache,
sampler.py picks the next token -> back through output_processor.py (detokenize, stop strings).
"""

from tokenworks.engine.async_llm import AsyncLLM
from tokenworks.engine.client import EngineDeadError
from tokenworks.engine.llm import LLM
from tokenworks.engine.options import EngineOptions
from tokenworks.engine.request_output import RequestMetrics, RequestOutput
from tokenworks.engine.sampling_params import SamplingParams

__all__ = ["LLM", "AsyncLLM", "EngineDeadError", "EngineOptions", "RequestMetrics", "RequestOutput", "SamplingParams"]
