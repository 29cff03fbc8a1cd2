"""`tokenworks serve`: the engine behind an OpenAI-compatible HTTP API (FastAPI on uvicorn).

Follow one request: `app.py` (middlewares: body size, auth, metrics; the lifespan owns
the `AsyncLLM`) -> `completions.py` or `chat.py` (body from `protocol.py` -> `sampling.py`
parameters, prompt checked before any byte is sent, room taken in `admission.py`) ->
`fanout.py` (one engine request per prompt and choice, per-request metrics) -> the engine
-> back as one JSON body or as server-sent events (`streaming.py`), with `usage.py` and
`logprobs.py` shaping the answer. Every failure becomes OpenAI's error object (`errors.py`);
`status.py` and `tokenization.py` are the small routes, `metrics.py` the Prometheus side,
`supervisor.py` decides what a dead engine means, and `cli.py` runs it all on `server.py`.
This package never imports torch: the engine core does that, in its own process.
"""

from tokenworks.serve.app import create_app
from tokenworks.serve.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
