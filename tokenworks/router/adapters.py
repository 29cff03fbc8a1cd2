"""LoRA adapters across the fleet: one load or unload at the router reaches every worker.

vLLM's API at the router (POST /v1/load_lora_adapter, /v1/unload_lora_adapter) goes to every
available worker at once. With `load_inplace`, each worker swaps the adapter behind the name as
one step (its running requests finish with the old one, new ones get the new one), so putting a
new version behind a served name, or the old one back, fails no request: the flywheel's hot swap
and rollback.

The router remembers what it loaded (name -> path) and what each worker holds of it:
- requests that name an adapter go to the workers holding the version the router loaded last,
  or, while a swap is under way, the one before it (each worker swaps when it can); when no
  available worker holds either, to any (a worker without it answers 404 itself);
- a worker that joins later, or fails (it may come back restarted, holding nothing), is given
  the adapters again by `keep_in_sync` once it answers, and takes their requests from then on;
- a load the workers refuse (a path that is no adapter: every worker answers 4xx) is the
  client's 400 and is not remembered; one that some workers could not take because they were
  down is remembered, answered 200 with what each worker did, and given to them when they are
  back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import aiohttp

from tokenworks.router.workers import HEALTH_INTERVAL_S, Worker, WorkerPool
from tokenworks.serve.errors import APIError

logger = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 60.0  # reading an adapter from disk into a worker's engine


@dataclass
class AdapterTable:
    loaded: dict[str, str] = field(default_factory=dict)  # name -> path, as the router loaded it last
    previous: dict[str, str] = field(default_factory=dict)  # name -> the path before, during a swap
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one load or unload at a time

    def eligible(self, model: object, candidates: list[Worker]) -> list[Worker]:
        """The candidates for a request naming `model`: those holding the adapter's version (see
        the module's docstring); all of them for the base model or an adapter the router did not load."""
        path = self.loaded.get(model) if isinstance(model, str) else None
        if path is None:
            return candidates
        accepted = {path, self.previous.get(model)}
        holding = [worker for worker in candidates if worker.adapters.get(model) in accepted]
        return holding or candidates

    async def load(self, session: aiohttp.ClientSession, pool: WorkerPool, name: str, path: str, replace: bool) -> dict:
        """Load the adapter on every available worker; what each did (see the module's docstring)."""
        async with self._lock:
            if name in self.loaded and not replace:
                raise APIError(
                    400, f"the LoRA adapter {name!r} is loaded already (load_inplace: true replaces it)",
                    param="lora_name",
                )  # fmt: skip
            workers = pool.candidates()
            if not workers:
                raise APIError(503, "no worker is available to load the adapter", code="no_worker")
            body = {"lora_name": name, "lora_path": path, "load_inplace": True}
            if name in self.loaded:
                self.previous[name] = self.loaded[name]
            try:
                results = await asyncio.gather(*(_post(session, w, "/v1/load_lora_adapter", body) for w in workers))
            finally:
                self.previous.pop(name, None)
            refused = [(worker, status, text) for worker, (status, text) in zip(workers, results, strict=True)
                       if status is not None and 400 <= status < 500]  # fmt: skip
            if len(refused) == len(workers):  # the adapter itself is at fault: the client's error
                raise APIError(refused[0][1], f"{refused[0][0].url}: {refused[0][2]}", param="lora_path")
            for worker, (status, _) in zip(workers, results, strict=True):
                if status == 200:
                    worker.adapters[name] = path
            self.loaded[name] = path
            return _report(name, workers, results)

    async def unload(self, session: aiohttp.ClientSession, pool: WorkerPool, name: str) -> dict:
        async with self._lock:
            if name not in self.loaded:
                raise APIError(404, f"the router loaded no LoRA adapter {name!r}", param="lora_name",
                               code="model_not_found")  # fmt: skip
            del self.loaded[name]  # from now on no worker is given it again
            workers = [worker for worker in pool.workers if name in worker.adapters]
            body = {"lora_name": name}
            results = await asyncio.gather(*(_post(session, w, "/v1/unload_lora_adapter", body) for w in workers))
            for worker, (status, _) in zip(workers, results, strict=True):
                if status in (200, 404):  # gone (a 404: it had lost it already)
                    worker.adapters.pop(name, None)
            return _report(name, workers, results)

    async def keep_in_sync(self, session: aiohttp.ClientSession, pool: WorkerPool) -> None:
        """For ever: give each available worker the adapters it lacks (one that joined, or is
        back after a failure)."""
        while True:
            for worker in pool.candidates():
                missing = {name: path for name, path in self.loaded.items() if worker.adapters.get(name) != path}
                for name, path in missing.items():
                    async with self._lock:
                        if self.loaded.get(name) != path:
                            continue  # unloaded or replaced meanwhile
                        body = {"lora_name": name, "lora_path": path, "load_inplace": True}
                        status, text = await _post(session, worker, "/v1/load_lora_adapter", body)
                        if status == 200:
                            worker.adapters[name] = path
                            logger.info("LoRA adapter %r given again to %s", name, worker.url)
                        elif status is not None:
                            logger.warning("%s did not take the LoRA adapter %r: %s", worker.url, name, text)
            await asyncio.sleep(HEALTH_INTERVAL_S)


async def _post(session: aiohttp.ClientSession, worker: Worker, path: str, body: dict) -> tuple[int | None, str]:
    """(status, text) of the worker's answer; (None, why) when it could not be reached."""
    try:
        timeout = aiohttp.ClientTimeout(total=LOAD_TIMEOUT_S)
        async with session.post(f"{worker.url}{path}", json=body, timeout=timeout) as response:
            return response.status, (await response.text())[:500]
    except (aiohttp.ClientError, TimeoutError) as error:
        worker.failed(f"{path}: {type(error).__name__}")
        return None, f"{type(error).__name__}: {error}"


def _report(name: str, workers: list[Worker], results: list[tuple[int | None, str]]) -> dict:
    return {
        "lora_name": name,
        "workers": [
            {"id": worker.id, "url": worker.url, "status": status, "message": text}
            for worker, (status, text) in zip(workers, results, strict=True)
        ],
    }
