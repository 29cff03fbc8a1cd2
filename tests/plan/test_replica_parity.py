"""The simulated replica makes the live engine's scheduling decisions, step for step.

The real `EngineCore` (a nano checkpoint on CPU) runs requests with shared prefixes on a KV cache
too small for all of them, so prefix hits, chunked prefill, preemption and eviction all happen;
every step's scheduled chunks are recorded. The simulator's replica, given the same requests at
the same step boundaries (and the tokens the engine sampled, so even the blocks holding output
hash alike), must schedule exactly the same chunks in exactly the same steps.
"""

from __future__ import annotations

import random

from tokenworks.engine.core import EngineCore
from tokenworks.engine.options import EngineOptions
from tokenworks.engine.sampling_params import SamplingParams
from tokenworks.plan.clock import SimClock
from tokenworks.plan.latency import ConstantLatency
from tokenworks.plan.replica import Replica, ReplicaConfig
from tokenworks.plan.step import StepShape

SETTINGS = dict(num_kv_blocks=9, block_size=16, max_num_batched_tokens=48, max_num_seqs=3)
LATE = 3  # the step before which the late requests arrive


def requests(vocab: int) -> list[tuple[str, list[int], int]]:
    """(id, prompt, output length): two families sharing 32-token (two-block) prefixes."""
    rng = random.Random(7)
    prefixes = [[rng.randrange(3, vocab) for _ in range(32)] for _ in range(2)]
    made = []
    for index in range(7):
        tail = [rng.randrange(3, vocab) for _ in range(rng.randrange(5, 40))]
        made.append((f"r{index}", prefixes[index % 2] + tail, rng.randrange(10, 30)))
    return made


def live_trace(model_dir, work, shapes: list[StepShape]) -> tuple[list, dict[str, list[int]]]:
    options = EngineOptions(
        model=model_dir, device="cpu", threads=1, kernels="torch", pack_weights=False, max_model_len=144,
        **SETTINGS,
    )  # fmt: skip
    core = EngineCore(options)
    trace, schedule = [], core.scheduler.schedule

    def recording():
        output = schedule()
        trace.append([(chunk.request.request_id, chunk.start, chunk.num_tokens) for chunk in output.chunks])
        shapes.append(StepShape.of(output))
        return output

    core.scheduler.schedule = recording
    outputs: dict[str, list[int]] = {}
    early, late = work[:4], work[4:]

    def add(batch):
        for request_id, prompt, count in batch:
            arrival = float(int(request_id[1:]))
            core.add_request(request_id, prompt, SamplingParams(max_tokens=count, ignore_eos=True, temperature=0.0),
                             arrival_time=arrival)  # fmt: skip

    add(early)
    step = 0
    while core.has_work() or step < LATE:
        if step == LATE:
            add(late)
        for output in core.step():
            outputs.setdefault(output.request_id, []).extend(output.new_token_ids)
        step += 1
    return trace, outputs


class ShapeRecorder(ConstantLatency):
    """A constant step time, keeping the shape of every step it is asked about."""

    def __init__(self) -> None:
        super().__init__(0.01)
        self.shapes: list[StepShape] = []

    def step_seconds(self, step: StepShape) -> float:
        self.shapes.append(step)
        return super().step_seconds(step)


def simulated_trace(work, outputs, latency: ShapeRecorder) -> Replica:
    clock = SimClock()
    replica = Replica(ReplicaConfig(max_model_len=144, **SETTINGS), latency, clock, trace=True)
    early, late = work[:4], work[4:]

    def add(batch):
        for request_id, prompt, _ in batch:
            replica.add(request_id, prompt, outputs[request_id], arrival=float(int(request_id[1:])))

    add(early)
    step = 0
    while replica.has_work() or step < LATE:
        if step == LATE:
            add(late)
        end = replica.start_step()
        if end is not None:
            clock.advance_to(end)
            replica.end_step()
        step += 1
    return replica


def test_the_replica_schedules_as_the_engine_does(nano_model_dir, tokenizer) -> None:
    work = requests(tokenizer.vocab_size)
    live_shapes, latency = [], ShapeRecorder()
    live, outputs = live_trace(nano_model_dir, work, live_shapes)
    assert {request_id: len(tokens) for request_id, tokens in outputs.items()} == {r: n for r, _, n in work}
    replica = simulated_trace(work, outputs, latency)
    assert replica.trace == live
    # and the latency model was asked about exactly the shapes StepShape.of makes of the live steps
    assert [(shape.chunks, shape.num_samples) for shape in latency.shapes] == [
        (shape.chunks, shape.num_samples) for shape in live_shapes
    ]
    # The trace is one that exercises what it should: chunked prefill, prefix hits and preemption.
    starts = [start for step in live for _, start, tokens in step if tokens > 1]
    assert any(start % 16 == 0 and start > 0 for start in starts)
    assert replica.scheduler.num_preemptions > 0
    assert replica.kv_cache.pool.stats.hits > 0
