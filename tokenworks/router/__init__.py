"""The router: one OpenAI-compatible endpoint in front of many workers (`tokenworks router`).

It imports no torch: it forwards requests, as bytes, to OpenAI-compatible workers (tokenworks
servers or vLLM), chosen per request by a policy (policies.py) among the healthy workers of the
pool (workers.py), and passes their answers and streams back (proxy.py, over upstream.py's
connections). A worker that fails
before answering is left for another; one that breaks a stream ends it with an error event.
"""

from tokenworks.router.app import RouterConfig, create_router_app

__all__ = ["RouterConfig", "create_router_app"]
