"""The compiled block keys, index tables and walk (router/_blocks.c) give exactly the Python ones' answers.

The keys are Python's own hash((parent, tuple(block))), so a key computed by either is the same
int; the compiled table holds what the Python one holds after any run of changes; the walk gives
the same groups for any index, masks wider than 64 bits included. And a module that cannot be
built leaves the Python loops in place, with the reason logged.
"""

from __future__ import annotations

import logging
import math
import random
import struct

import pytest

from tokenworks import native
from tokenworks.router import prefix_index
from tokenworks.router.key_masks import KeyMasks
from tokenworks.router.kv_policy import KvAware
from tokenworks.router.prefix_index import Match, PrefixIndex, block_keys, chained_keys
from tokenworks.router.workers import Worker

EDGE_PARENTS = [0, 1, -1, -2, 2**61 - 2, 2**61 - 1, 2**61, -(2**61 - 1), -(2**61), 2**63 - 1, -(2**63)]


def python_keys(token_ids: list[int], block_size: int, parent: int) -> list[int]:
    keys = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size])))
        keys.append(parent)
    return keys


@pytest.fixture
def python_loops(monkeypatch):
    monkeypatch.setattr(prefix_index, "compiled", None)


def test_the_module_is_built_here() -> None:
    # CI and this machine have a C compiler (the engine's kernels need one): the router's
    # decisions there take the compiled loops, so the comparisons below compare something.
    assert prefix_index.compiled is not None


def test_keys_are_pythons_own_hashes() -> None:
    rng = random.Random(0)
    for _ in range(400):
        block_size = rng.choice([1, 2, 3, 16, 32])
        # ids read from the int itself (one 30-bit digit, either sign) and through hash() (wider ones, bools)
        edges = [0, 1, -1, -2, 2**30 - 1, 2**30, -(2**30 - 1), -(2**30), True, rng.randrange(2**40)]
        tokens = [rng.choice([rng.randrange(8192), rng.choice(edges)]) for _ in range(rng.randrange(70))]
        parent = rng.choice([*EDGE_PARENTS, hash(("lora", rng.random())), rng.randrange(-(2**63), 2**63)])
        expected = python_keys(tokens, block_size, parent)
        assert chained_keys(tokens, block_size, parent) == expected
        assert chained_keys(tuple(tokens), block_size, parent) == expected
    assert block_keys([5] * 40, 16, extra="adapter") == python_keys([5] * 40, 16, hash((0, "adapter")))
    assert block_keys([5] * 15, 16) == []


def test_the_python_fallback_makes_the_same_keys(python_loops) -> None:
    rng = random.Random(1)
    tokens = [rng.randrange(8192) for _ in range(1000)]
    for parent in EDGE_PARENTS:
        assert chained_keys(tokens, 16, parent) == python_keys(tokens, 16, parent)


def test_the_compiled_table_holds_what_the_python_one_holds() -> None:
    """Random runs of adds and discards (keys that share home slots, edge values, a table grown
    to thousands of keys and emptied again): after each change both hold the same masks."""
    rng = random.Random(2)
    compiled_table, python_table = prefix_index.compiled.KeyMasks(), KeyMasks()
    edges = [0, 1, -1, -2, 2**63 - 1, -(2**63), 2**32, -(2**32)]
    # Keys whose home is the first slot or the last (the table's home is the top bits of key x an
    # odd constant): long runs of probing, and runs that wrap around the end of the array.
    inverse = pow(11400714819323198485, -1, 2**64)
    crowded = []
    for _ in range(200):
        product = rng.choice([rng.randrange(2**50), 2**64 - 1 - rng.randrange(2**50)])
        key = product * inverse % 2**64
        crowded.append(key - 2**64 if key >= 2**63 else key)
    pool = edges + crowded + [rng.randrange(-(2**63), 2**63) for _ in range(5000)]
    bits = [1, 2, 1 << 63, 0, 5, (1 << 64) - 1]
    for step in range(3000):
        growing = step % 1000 < 600
        keys = rng.sample(pool, rng.choice([1, 2, 8, 64]))
        bit = rng.choice(bits)
        if growing or rng.random() < 0.2:
            compiled_table.add(keys, bit)
            python_table.add(keys, bit)
        else:
            compiled_table.discard(keys, bit)
            python_table.discard(keys, bit)
        probe = rng.sample(pool, 16)
        assert [compiled_table.get(key) for key in probe] == [python_table.get(key) for key in probe]
        assert len(compiled_table) == len(python_table)
        if step % 100 == 99:
            assert sorted(compiled_table.items()) == sorted(python_table.items())
            assert sorted(compiled_table.holding(1 << 63)) == sorted(python_table.holding(1 << 63))
    for bit in bits:  # emptied: every key leaves (the table shrinking as it goes)
        compiled_table.discard(pool, bit)
        python_table.discard(pool, bit)
    assert len(compiled_table) == len(python_table) == 0 and compiled_table.items() == []
    with pytest.raises(OverflowError):
        compiled_table.add([1], 1 << 64)  # the index moves to the Python table before a 65th worker
    with pytest.raises(OverflowError):
        compiled_table.get(2**63)


def test_a_65th_worker_moves_the_index_to_the_python_tables() -> None:
    index = PrefixIndex()
    for k in range(64):
        index.add_worker(f"w{k}")
    index.stored("w63", [1, 2], None, list(range(8)), 4)
    index.predict("w0", block_keys(list(range(8)), 4), 60.0)
    assert not isinstance(index._holders, KeyMasks)  # compiled while 64 bits hold every worker
    index.add_worker("w64")
    assert isinstance(index._holders, KeyMasks) and isinstance(index._predicted, KeyMasks)
    index.stored("w64", [3], None, list(range(4)), 4)
    assert index.matched_blocks(block_keys(list(range(8)), 4)) == {"w0": 2, "w63": 2, "w64": 1}


def _random_index(rng: random.Random, workers: int) -> tuple[PrefixIndex, list[list[int]]]:
    index = PrefixIndex()
    for k in range(workers):
        index.add_worker(f"w{k}")
    prompts = [[rng.randrange(6) for _ in range(rng.randrange(16, 120))] for _ in range(40)]
    engine_hash = 0
    for prompt in prompts:
        for worker in rng.sample(range(workers), rng.randrange(1, min(workers, 5) + 1)):
            blocks = rng.randrange(len(prompt) // 4 + 1)
            hashes = list(range(engine_hash, engine_hash + blocks))
            engine_hash += blocks
            index.stored(f"w{worker}", hashes, None, prompt[: blocks * 4], 4)
        if rng.random() < 0.3:
            index.predict(f"w{rng.randrange(workers)}", block_keys(prompt, 4)[: rng.randrange(8)], 60.0)
    return index, prompts


@pytest.mark.parametrize("workers", [1, 7, 64, 70])
def test_the_walk_gives_the_python_loops_groups(workers: int, monkeypatch) -> None:
    rng = random.Random(workers)
    index, prompts = _random_index(rng, workers)
    queries = []
    for _ in range(300):
        prompt = rng.choice(prompts)
        cut = rng.randrange(len(prompt) + 1)
        tokens = prompt[:cut] + [rng.randrange(6) for _ in range(rng.randrange(12))]
        wanted = rng.choice([None, 0, rng.getrandbits(min(workers, 64)), (1 << min(workers, 64)) - 1])
        queries.append((block_keys(tokens, 4), wanted))
    compiled = [index.match(keys, wanted).groups for keys, wanted in queries]
    monkeypatch.setattr(prefix_index, "compiled", None)
    assert compiled == [index.match(keys, wanted).groups for keys, wanted in queries]
    assert any(depth > 1 for groups in compiled for depth, _ in groups)  # walks past the first block
    assert workers == 1 or any(len(groups) > 1 for groups in compiled)  # and workers part on the way


class PlainWorker:
    """A worker of another class than the router's (no slots): its loads are read by name."""

    def __init__(self, worker_id: str, in_flight: int, decoding: int, pending: float) -> None:
        self.id, self.in_flight, self.decoding, self.pending_prefill_tokens = worker_id, in_flight, decoding, pending


def test_the_pricing_gives_the_python_loops_floats(monkeypatch) -> None:
    """KvAware._price in C against the Python comprehension: the same costs to the last bit, the
    same tokens lacking and the same cheapest, ties (equal estimates), a cost that is not a
    number or infinite, two block sizes and a worker of another class included."""
    rng = random.Random(7)
    compiled, python, exact_ties = [], [], 0
    cases = []
    for _ in range(400):
        count = rng.randrange(1, 65)
        index = PrefixIndex()
        workers = []
        for k in range(count):
            index.add_worker(f"w{k}")
            in_flight = rng.choice((0, 0, 1, 3, 8))
            pending = rng.choice((0, 0, 16, 512, 2**40))
            worker = Worker(f"http://127.0.0.1:{9000 + k}", f"w{k}", in_flight=in_flight, block_size=4)
            if rng.random() < 0.1:
                worker = PlainWorker(f"w{k}", in_flight, 0, pending)
            worker.decoding, worker.pending_prefill_tokens = rng.randrange(in_flight + 1), pending
            workers.append(worker)
        if rng.random() < 0.05:
            rng.choice(workers).pending_prefill_tokens = rng.choice((math.nan, math.inf))
        alike = rng.random() < 0.5
        roster = [
            (worker, worker.id, *((0.01, 1e-4, 0.021, 0.0015) if alike else (rng.uniform(0, 0.02), rng.uniform(0, 1e-3),
             rng.uniform(0.01, 0.03), rng.uniform(0, 3e-3))))
            for worker in workers
        ]  # fmt: skip
        prompt = rng.randrange(1, 200)
        policy = KvAware(index)
        policy._roster_bits = [index.bit(worker.id) for worker in workers]
        policy._candidates_mask = index.mask_of(worker.id for worker in workers)
        position = {worker.id: k for k, worker in enumerate(workers)}
        policy._roster, policy._position = roster, position
        sizes = (4, 8)[: rng.randrange(1, 3)]
        groups: dict[int, dict[int, int]] = {size: {} for size in sizes}  # size -> blocks -> mask
        for k in range(count):  # each worker holds the prompt's first blocks at one block size, or none
            if rng.random() < 0.6:
                size = rng.choice(sizes)
                blocks = rng.randrange(1, prompt // size + 2)
                groups[size][blocks] = groups[size].get(blocks, 0) | index.bit(f"w{k}")
        matches = {size: Match([], sorted(groups[size].items())) for size in sizes}
        outputs = rng.choice((1, 16.0, 128, 97.3))
        cases.append((policy, roster, matches, prompt, outputs, workers, rng.randrange(count)))
    for policy, roster, matches, prompt, outputs, workers, start in cases:
        compiled.append(policy._price(roster, matches, prompt, outputs, workers, start))
    monkeypatch.setattr(prefix_index, "compiled", None)
    for policy, roster, matches, prompt, outputs, workers, start in cases:
        python.append(policy._price(roster, matches, prompt, outputs, workers, start))
    for (cheapest, costs, lacking), (expected_cheapest, expected_costs, expected_lacking) in zip(
        compiled, python, strict=True
    ):
        assert (cheapest, lacking) == (expected_cheapest, expected_lacking)
        assert [struct.pack("<d", cost) for cost in costs] == [struct.pack("<d", cost) for cost in expected_costs]
        exact_ties += expected_cheapest is not None and expected_costs.count(expected_costs[expected_cheapest]) > 1
    assert exact_ties > 20 and any(cheapest is None for cheapest, _, _ in python)


def test_a_module_that_cannot_be_built_leaves_the_python_loops(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv(native.DIRECTORY_VARIABLE, str(tmp_path))
    broken = tmp_path / "_broken.c"
    broken.write_text("this is not C\n")
    with caplog.at_level(logging.INFO, logger="tokenworks.native"):
        assert native.load("_broken", broken) is None
    assert "_broken: not compiled" in caplog.text and "failed" in caplog.text
    assert not list(tmp_path.glob("*.so"))  # nothing half-written left in the cache

    monkeypatch.setenv(native.ENABLE_VARIABLE, "0")
    assert native.load("_off", prefix_index.Path(prefix_index.__file__).with_name("_blocks.c")) is None
