"""AsyncLLM against a real engine-core process: streaming, aborts under load, a crashed core."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tokenworks.engine import AsyncLLM, EngineDeadError, EngineOptions, SamplingParams
from tokenworks.engine.client import EngineCoreClient

from .conftest import SMALL_KV_CACHE, random_prompts


def run(coroutine):
    return asyncio.run(coroutine)


def test_streamed_deltas_add_up_to_the_final_output(llama_dir) -> None:
    async def main():
        engine = AsyncLLM(llama_dir, threads=1, **SMALL_KV_CACHE)
        try:
            params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
            updates = [output async for output in engine.generate("Return the list", params)]
            return updates
        finally:
            await engine.shutdown()

    updates = run(main())
    final = updates[-1]
    assert final.finished and final.finish_reason == "length" and len(final.token_ids) == 12
    assert [token for u in updates for token in u.delta_token_ids] == final.token_ids
    assert "".join(u.delta_text for u in updates) == final.text
    assert not any(u.finished for u in updates[:-1])
    assert final.metrics.first_token_time >= final.metrics.arrival_time


def test_aborts_under_load_free_every_block_and_spare_the_rest(llama_dir) -> None:
    async def main():
        engine = AsyncLLM(llama_dir, threads=1, max_num_seqs=64, **SMALL_KV_CACHE)
        try:
            params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
            prompts = random_prompts(48, seed=11)

            async def consume(prompt, stop_after):
                updates = []
                async for output in engine.generate(prompt, params):
                    updates.append(output)
                    if stop_after is not None and len(updates) >= stop_after:
                        return None  # leaving the loop early aborts the request
                return updates[-1]

            results = await asyncio.gather(
                *(consume(prompt, 2 if index % 3 == 0 else None) for index, prompt in enumerate(prompts))
            )
            stats = await engine.call("stats")
            return results, stats
        finally:
            await engine.shutdown()

    results, stats = run(main())
    finished = [r for r in results if r is not None]
    assert len(finished) == 32 and all(len(r.token_ids) == 40 for r in finished)
    assert stats.scheduler.kv_cache_usage == 0.0
    assert (stats.scheduler.num_running, stats.scheduler.num_waiting) == (0, 0)


def test_a_dead_core_fails_every_waiting_stream(llama_dir) -> None:
    async def main():
        engine = AsyncLLM(llama_dir, threads=1, **SMALL_KV_CACHE)
        params = SamplingParams(max_tokens=250, temperature=0.0, ignore_eos=True)
        started = [asyncio.Event() for _ in range(3)]

        async def consume(event):
            async for _ in engine.generate([5, 6, 7], params):
                event.set()

        tasks = [asyncio.create_task(consume(event)) for event in started]
        for event in started:  # kill the core while every stream is mid-way
            await event.wait()
        os.kill(engine.client.process.pid, signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
        with pytest.raises(EngineDeadError):
            async for _ in engine.generate([1], params):
                pass
        await engine.shutdown()
        return results

    results = run(main())
    assert all(isinstance(result, EngineDeadError) for result in results)


def test_an_idle_core_that_dies_is_noticed_at_once_and_a_restart_serves_the_same_tokens(llama_dir) -> None:
    async def main():
        engine = await AsyncLLM.start(llama_dir, threads=1, kv_cache_memory_gib=0.05)
        died = asyncio.Event()
        errors: list[EngineDeadError] = []
        engine.on_death(lambda error: (errors.append(error), died.set()))
        params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
        before = [output async for output in engine.generate([5, 6, 7], params)][-1].token_ids
        old_pid = engine.client.process.pid
        os.kill(old_pid, signal.SIGKILL)  # no request in flight: nothing but the watch can notice
        killed = time.monotonic()
        await asyncio.wait_for(died.wait(), timeout=10)
        noticed_after = time.monotonic() - killed
        with pytest.raises(EngineDeadError):
            async for _ in engine.generate([1], params):
                pass
        await engine.restart()
        after = [output async for output in engine.generate([5, 6, 7], params)][-1].token_ids
        new_pid = engine.client.process.pid
        await engine.shutdown()
        return before, after, noticed_after, errors, old_pid, new_pid

    before, after, noticed_after, errors, old_pid, new_pid = run(main())
    assert len(before) == 6 and after == before
    assert noticed_after < 2.0  # the watch polls every 0.1 s: seconds, not a hang
    assert len(errors) == 1 and "exited" in str(errors[0])
    assert new_pid != old_pid


def test_a_core_that_dies_while_starting_fails_the_start_at_once(llama_dir) -> None:
    client = EngineCoreClient(EngineOptions(model=llama_dir, threads=1, kv_cache_memory_gib=0.05))
    os.kill(client.process.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(EngineDeadError, match="exited during startup"):
        client.wait_ready()
    assert time.monotonic() - started < 2.0
    assert client.process.poll() is not None
