"""Several replicas behind the router's own policies: where requests go and what they find cached."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from tests.plan.conftest import LinearLatency, replicas
from tokenworks.bench.records import RequestRecord
from tokenworks.plan.clock import SimClock
from tokenworks.plan.load import Send
from tokenworks.plan.routing import SimRouter, policy_on_clock
from tokenworks.plan.simulator import Simulation


class ScriptedLoad:
    """Given prompts sent at given times."""

    def __init__(self, script: list[tuple[float, list[int], int]]) -> None:
        self.script, self.records, self.sends, self.measured_start = script, [], [], 0.0

    def start(self, sender) -> None:
        for moment, prompt, outputs in self.script:
            sender.call_at(moment, lambda prompt=prompt, outputs=outputs: self._send(sender, prompt, outputs))

    def _send(self, sender, prompt: list[int], outputs: int) -> None:
        record = RequestRecord(index=len(self.records), warmup=False, intended_send=None, sent=0.0)
        self.records.append(record)
        send = Send(record, prompt, list(range(100, 100 + outputs)))
        self.sends.append(send)
        sender.submit(send)


def prefix_script() -> list[tuple[float, list[int], int]]:
    """Two 32-token (two-block) prefixes A and B, each request the prefix and 8 tokens of its own,
    one a second (each is answered well within it): A A B B A B."""
    rng = random.Random(3)
    a, b = ([rng.randrange(200, 600) for _ in range(32)] for _ in range(2))
    order = [a, a, b, b, a, b]
    return [(float(t), prefix + [rng.randrange(200, 600) for _ in range(8)], 4) for t, prefix in enumerate(order)]


def run(policy_name: str):
    clock = SimClock()
    policy = policy_on_clock(policy_name, clock)
    router = SimRouter(policy, [16, 16], clock)
    simulation = Simulation(replicas(2, LinearLatency(0.002, 1e-4), clock, kv_events=router.records_kv_events),
                            clock, router)  # fmt: skip
    load = ScriptedLoad(prefix_script())
    stats = simulation.run(load)
    return load, stats, router


def test_kv_sends_each_prefix_where_its_blocks_are() -> None:
    load, stats, router = run("kv")
    assert [send.replica for send in load.sends] == [0, 0, 1, 1, 0, 1]
    assert [record.cached_tokens for record in load.records] == [0, 32, 0, 32, 32, 32]
    assert (stats.cached_tokens, stats.prompt_tokens) == (128, 240)
    assert stats.route_reasons == {"no-prefix-hit": 2, "prefix-hit": 4}
    # The router's view at the end, kept as the live router keeps it: nothing in flight, every
    # answer learnt from, and each replica's blocks confirmed by its events.
    assert [worker.in_flight for worker in router.workers] == [0, 0]
    assert [worker.pending_prefill_tokens for worker in router.workers] == [0, 0]
    assert [worker.served for worker in router.workers] == [3, 3]
    assert [worker.ttft.samples for worker in router.workers] == [3, 3]
    assert router.index.size("w0") == router.index.size("w1") == 2  # its prefix: 44 tokens fill two blocks


def test_round_robin_finds_a_prefix_only_where_it_happens_to_go() -> None:
    load, stats, _ = run("round-robin")
    assert [send.replica for send in load.sends] == [0, 1, 0, 1, 0, 1]
    assert [record.cached_tokens for record in load.records] == [0, 0, 0, 0, 32, 32]
    assert stats.cached_tokens == 64


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'"):
        policy_on_clock("fastest", SimClock())


def test_the_simulator_imports_no_torch() -> None:
    """It runs the engine's scheduler and KV cache, which need no torch, and nothing that does."""
    code = (
        "import sys, tokenworks.plan.simulate, tokenworks.plan.results, tokenworks.plan.simulate_cli; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
