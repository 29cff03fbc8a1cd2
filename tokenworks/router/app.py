"""The router's FastAPI app: the generation routes forwarded, models, health, and the pool.

| route | what |
|---|---|
| `POST /v1/completions`, `/v1/chat/completions` | forwarded to a worker the policy picks (proxy.py) |
| `GET /v1/models` | every model the available workers serve (each once) |
| `GET /health` | 200 while at least one worker is available, else 503 |
| `GET /metrics` | Prometheus metrics, `tokenworks_router_*` (metrics.py) |
| `GET /workers`, `POST /workers {"url"}`, `DELETE /workers/{id}` | the pool, and workers joining and leaving |
| `POST /v1/load_lora_adapter`, `/v1/unload_lora_adapter` | vLLM's adapter API, on every worker (adapters.py) |
| `POST /v1/feedback` | to the worker whose request log holds the answer (proxy.py) |
| `POST /tokenize`, `/detokenize` | vLLM's tokenizer routes, answered by the least busy worker (proxy.py) |
| `GET /dashboard` | the workers at a glance: load, health, learnt speeds, prefix hits |

The lifespan holds one aiohttp session to the workers, the health loop and, under the `kv`
policy, the KV event feeds and the search for a tokenizer (a worker's model directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenworks import __version__
from tokenworks.gc_tuning import calm_the_garbage_collector
from tokenworks.router.adapters import AdapterTable
from tokenworks.router.dashboard import router as dashboard_router
from tokenworks.router.kv_events import KVEventFeeds
from tokenworks.router.kv_policy import MAX_LOAD_RATIO, KvAware
from tokenworks.router.metrics import RouterMetrics
from tokenworks.router.policies import DEFAULT_POLICY, Policy, RoutedRequest, make_policy
from tokenworks.router.prefix_index import PrefixIndex
from tokenworks.router.prompts import PromptTokenizer
from tokenworks.router.proxy import CONNECT_TIMEOUT_S, forward, forward_feedback, forward_tokenization
from tokenworks.router.upstream import WorkerConnections
from tokenworks.router.workers import WorkerPool
from tokenworks.serve.auth import PROTECTED_PREFIXES, ApiKeyMiddleware
from tokenworks.serve.config import DEFAULT_MAX_BODY_BYTES
from tokenworks.serve.errors import (
    APIError,
    BodySizeLimitMiddleware,
    api_error_of,
    error_response,
    install_error_handlers,
)
from tokenworks.serve.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from tokenworks.serve.streaming import ClientGone, run_until_disconnect

logger = logging.getLogger(__name__)

GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
MODELS_TIMEOUT_S = 2.0
TOKENIZER_SEARCH_S = 0.5


@dataclass(slots=True)
class RouterConfig:
    workers: list[str] = field(default_factory=list)
    policy: str = DEFAULT_POLICY
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # Bearer token required on /v1/* and /workers when set
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    tokenizer: str | None = None  # kv: the model directory whose tokenizer cuts prompts into blocks
    max_load_ratio: float = MAX_LOAD_RATIO  # kv: the hot-spot guard

    def validate(self) -> None:
        if self.policy != "kv":
            make_policy(self.policy)
        if self.max_load_ratio < 1:
            raise ValueError(f"the max load ratio must be at least 1, got {self.max_load_ratio}")
        WorkerPool.of(self.workers)  # each a URL, none twice
        if self.tokenizer is not None:
            PromptTokenizer.check(self.tokenizer)  # loaded once, by routing_of


@dataclass
class Routing:
    """What the routes share: the pool, the policy and, under kv, the index and its feeds."""

    pool: WorkerPool
    policy: Policy
    metrics: RouterMetrics
    prompts: PromptTokenizer
    feeds: KVEventFeeds | None = None
    adapters: AdapterTable = field(default_factory=AdapterTable)


def routing_of(config: RouterConfig) -> Routing:
    pool = WorkerPool.of(config.workers)
    metrics = RouterMetrics(pool)
    prompts = PromptTokenizer(config.tokenizer)
    if config.policy != "kv":
        return Routing(pool, make_policy(config.policy), metrics, prompts)
    index = PrefixIndex()
    feeds = KVEventFeeds(pool, index)
    metrics.index, metrics.feeds = index, feeds.stats
    return Routing(pool, KvAware(index, config.max_load_ratio), metrics, prompts, feeds)


async def find_tokenizer(routing: Routing, session: aiohttp.ClientSession) -> None:
    """Until the router has a tokenizer: the model directory an available worker names, if it is here."""
    timeout = aiohttp.ClientTimeout(total=MODELS_TIMEOUT_S)
    warned = False
    while routing.prompts.tokenizer is None:
        for worker in routing.pool.candidates():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
                async with session.get(f"{worker.url}/v1/models", timeout=timeout) as response:
                    cards = (await response.json())["data"] if response.status == 200 else []
                if any(routing.prompts.try_load(card.get("root")) for card in cards if not card.get("parent")):
                    return
                if cards and not warned:
                    logger.warning("kv: no worker names a model directory here; requests go by load until "
                                   "one does (give --tokenizer DIR)")  # fmt: skip
                    warned = True
        await asyncio.sleep(TOKENIZER_SEARCH_S)


def _json_object(raw: bytes) -> dict:
    """A request's body, which must be a JSON object (else OpenAI's 400, before any worker is asked)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


class GenerationFastPath:
    """POSTs to the generation routes go straight to their handler, past FastAPI's routing,
    dependency solving and exception middleware, which took 0.2 of the 0.3 ms between a request
    reaching the app and its handler (the routes stay declared, for the OpenAPI schema). Errors become
    OpenAI's error object as the app's handlers make them; a body over the limit is left to the
    size middleware outside."""

    def __init__(self, app: ASGIApp, generate: Callable[[Request, str], Awaitable[Response]]) -> None:
        self.app, self.generate = app, generate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            response = await self.generate(Request(scope, receive), scope["path"])
        except HTTPException:
            raise
        except Exception as error:  # as the app's catch-all handler: an error object, logged
            api = api_error_of(error)
            response = error_response(api.status, api.message, api.param, api.code, api.headers)
        await response(scope, receive, send)


def create_router_app(config: RouterConfig) -> FastAPI:
    config.validate()
    routing = routing_of(config)
    pool, policy, metrics = routing.pool, routing.policy, routing.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        connector = aiohttp.TCPConnector(limit=0)  # as many connections as requests in flight
        async with aiohttp.ClientSession(connector=connector) as session:
            app.state.session = session  # the router's own calls (health, models, events, adapters)
            app.state.connections = WorkerConnections(CONNECT_TIMEOUT_S)  # the requests it forwards
            tasks = [
                asyncio.ensure_future(pool.watch_health(session)),
                asyncio.ensure_future(routing.adapters.keep_in_sync(session, pool)),
            ]
            if routing.feeds is not None:
                tasks.append(asyncio.ensure_future(routing.feeds.run(session)))
                tasks.append(asyncio.ensure_future(find_tokenizer(routing, session)))
            logger.info("routing to %d workers by %s", len(pool.workers), policy.name)
            calm_the_garbage_collector()  # as the server does: startup's objects out of every collection
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await app.state.connections.close()

    app = FastAPI(title="tokenworks router", version=__version__, lifespan=lifespan)
    app.state.routing = routing

    async def generate(request: Request, path: str) -> Response:
        raw = await request.body()
        body = _json_object(raw)
        routed = RoutedRequest(body, {name.lower(): value for name, value in request.headers.items()})
        if routing.feeds is not None:
            prompt = routing.prompts.prompt(path, body)
            if prompt is not None:
                routed.tokens = prompt.token_ids
                routed.tokens_header = routing.prompts.header(prompt)
        try:  # a client that leaves before the answer cancels the forward, and so the worker's work
            return await run_until_disconnect(
                request, forward(path, raw, routed, pool, policy, app.state.connections, metrics, routing.adapters)
            )
        except ClientGone:
            return Response(status_code=499)

    @app.post("/v1/completions", summary="Forwarded to a worker (OpenAI Completions API).")
    async def completions(request: Request):
        return await generate(request, "/v1/completions")

    @app.post("/v1/chat/completions", summary="Forwarded to a worker (OpenAI Chat Completions API).")
    async def chat_completions(request: Request):
        return await generate(request, "/v1/chat/completions")

    @app.get("/v1/models", summary="Every model the available workers serve.")
    async def models(request: Request):
        session: aiohttp.ClientSession = request.app.state.session
        timeout = aiohttp.ClientTimeout(total=MODELS_TIMEOUT_S)

        async def listed(url: str) -> list[dict]:
            try:
                async with session.get(f"{url}/v1/models", timeout=timeout) as response:
                    return (await response.json())["data"] if response.status == 200 else []
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
                return []

        cards: dict[str, dict] = {}
        for answer in await asyncio.gather(*(listed(worker.url) for worker in pool.candidates())):
            for card in answer:
                cards.setdefault(card.get("id"), card)
        if not cards:
            raise APIError(503, "no worker is available to list its models", code="no_worker")
        return {"object": "list", "data": list(cards.values())}

    @app.post(
        "/v1/load_lora_adapter", summary="Load a LoRA adapter on every worker (vLLM's API; load_inplace swaps it)."
    )
    async def load_lora_adapter(body: LoadLoRAAdapterRequest, request: Request):
        session: aiohttp.ClientSession = request.app.state.session
        return await routing.adapters.load(session, pool, body.lora_name, body.lora_path, body.load_inplace)

    @app.post("/v1/unload_lora_adapter", summary="Unload a LoRA adapter from every worker (vLLM's API).")
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, request: Request):
        return await routing.adapters.unload(request.app.state.session, pool, body.lora_name)

    @app.post("/v1/feedback", summary="Feedback on an answer, to the worker whose request log has it.")
    async def feedback(request: Request):
        return await forward_feedback(await request.body(), pool.candidates(), request.app.state.session)

    async def tokenization(request: Request, path: str) -> Response:
        raw = await request.body()
        model = _json_object(raw).get("model")
        return await forward_tokenization(
            path, raw, lambda tried: routing.adapters.eligible(model, pool.candidates(tried)), request.app.state.session
        )

    @app.post("/tokenize", summary="Text or messages to token ids, by a worker (vLLM's API).")
    async def tokenize(request: Request):
        return await tokenization(request, "/tokenize")

    @app.post("/detokenize", summary="Token ids to text, by a worker (vLLM's API).")
    async def detokenize(request: Request):
        return await tokenization(request, "/detokenize")

    @app.get("/health", summary="200 while at least one worker is available, else 503.")
    async def health():
        available = len(pool.candidates())
        if not available:
            return error_response(503, "no worker is available", code="no_worker")
        return {"status": "ok", "workers": available, "of": len(pool.workers)}

    @app.get("/metrics", summary="Prometheus metrics (tokenworks_router_*).")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/workers", summary="The workers, their load and health.")
    async def workers():
        return {"policy": policy.name, "workers": [worker.describe() for worker in pool.workers]}

    @app.post("/workers", status_code=201, summary='Add a worker: {"url": "http://host:port"}.')
    async def add_worker(request: Request):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = None
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str):
            raise APIError(400, 'the body must be {"url": "http://host:port"}', param="url")
        try:
            worker = pool.add(url)
        except ValueError as error:
            raise APIError(400, str(error), param="url") from None
        if routing.feeds is not None:
            routing.feeds.watch(worker)
        return JSONResponse(worker.describe(), status_code=201)

    @app.delete("/workers/{worker_id}", summary="Remove a worker (its requests in flight finish).")
    async def remove_worker(worker_id: str):
        try:
            worker = pool.remove(worker_id)
        except KeyError:
            raise APIError(404, f"no worker {worker_id!r}", code="worker_not_found") from None
        if routing.feeds is not None:
            routing.feeds.forget(worker)
        return worker.describe()

    app.include_router(dashboard_router)
    install_error_handlers(app)
    app.add_middleware(GenerationFastPath, generate=generate)  # inside the two below: both still apply
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key, prefixes=(*PROTECTED_PREFIXES, "/workers"))
    return app
