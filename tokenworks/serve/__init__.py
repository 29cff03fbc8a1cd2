"""`tokenworks serve`: the engine behind an OpenAI-compatible HTTP API (FastAPI on uvicorn).

Follow one request: `app.py` (middlewares: body size, auth, metrics; the lifespan owns
the `AsyncLLM`) -> `completions.py` or `chat.py` (body from `protocol.py` -> sampling
parameters, prompt checked before any byte is sent) -> `serving.py` (admission against
the queue limit, fan-out of `n`, per-request metrics) -> the engine -> back as one JSON
body or as server-sent events (`streaming.py`). Every failure becomes OpenAI's error
object (`errors.py`); `metrics.py` is the Prometheus side; `cli.py` runs it all.
"""

from tokenworks.serve.app import create_app
from tokenworks.serve.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
