"""The fast mode's GPU predictions (DatasheetLatency) against published figures.

    .venv/bin/python benchmarks/plan_gpu_reference.py

Not a test and not run in CI. Issue 23 asks the GPU predictions to be compared with published
results for Llama-class models, each cited with its date, errors reported, never tuned to them:
the catalog's efficiency assumptions (hardware.toml [assumptions]) and the engine settings below
are fixed before the comparison and the same for every row.

The published figures (read 2026-12-05 through the stored-pages search):
- NVIDIA TensorRT-LLM performance overview (github.com/NVIDIA/TensorRT-LLM,
  docs/source/performance/perf-overview.md at commit 00f37686aa85, the v1.0 tables):
  trtllm-bench's offline throughput scenario (every request queued at once; 3,000 requests of
  1000/1000 tokens, 1,500 of 5000/500), "Total Output Throughput (tokens/sec)", FP8 checkpoints
  on H100/H200 and FP4 on B200.
- NVIDIA NIM for LLMs benchmarking guide, Performance (docs.nvidia.com/nim/benchmarking/llm/
  1.0.0/performance), Llama-3.3-70b-instruct NIM 1.8.0 on 2 x H100 80G, fp8, TP2, 5000 input /
  500 output tokens, measured with AIPerf at fixed concurrency: TTFT, ITL, throughput (tokens/s).

Model shapes are the published config.json values of Llama 3.1 8B and Llama 3.1/3.3 70B (the
same shape), written here as dicts. Engine settings for every row: block 32 tokens (TensorRT-LLM's
default), max_num_batched_tokens 8,192, max_num_seqs 2,048 (trtllm-bench sizes its batch from
memory; 2,048 is an assumption), 90% of HBM for weights and KV cache, KV cache at the weights'
precision (FP8; FP8 under FP4 weights).
"""

from __future__ import annotations

from dataclasses import dataclass

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 128256,
    "max_position_embeddings": 131072, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}  # fmt: skip
LLAMA_31_70B = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
    "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80, "vocab_size": 128256,
    "max_position_embeddings": 131072, "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}  # fmt: skip

TRTLLM = "TensorRT-LLM perf-overview (v1.0 tables, commit 00f37686aa85), offline, output tokens/s"
NIM = "NIM LLM benchmarking guide 1.0.0, Llama-3.3-70b NIM 1.8.0, 2xH100 fp8 TP2, 5000/500"


@dataclass(frozen=True)
class Reference:
    model: str
    config: dict
    gpu: str
    tp: int
    precision: str
    inputs: int
    outputs: int
    concurrency: int  # requests in flight (offline: all of them)
    requests: int
    metric: str  # output_throughput, ttft_p50 or tpot_p50
    published: float
    source: str


REFERENCES = [
    Reference("Llama 3.1 8B", LLAMA_31_8B, "H100", 1, "fp8", 1000, 1000, 3000, 3000, "output_throughput", 15220, TRTLLM),
    Reference("Llama 3.1 8B", LLAMA_31_8B, "H200", 1, "fp8", 1000, 1000, 3000, 3000, "output_throughput", 17744, TRTLLM),
    Reference("Llama 3.1 8B", LLAMA_31_8B, "H100", 1, "fp8", 5000, 500, 1500, 1500, "output_throughput", 3459, TRTLLM),
    Reference("Llama 3.3 70B", LLAMA_31_70B, "H100", 2, "fp8", 1000, 1000, 3000, 3000, "output_throughput", 4205, TRTLLM),
    Reference("Llama 3.3 70B", LLAMA_31_70B, "H200", 1, "fp8", 1000, 1000, 3000, 3000, "output_throughput", 2909, TRTLLM),
    Reference("Llama 3.3 70B", LLAMA_31_70B, "B200", 1, "fp4", 1000, 1000, 3000, 3000, "output_throughput", 7007, TRTLLM),
    Reference("Llama 3.3 70B", LLAMA_31_70B, "H100", 2, "fp8", 5000, 500, 1, 40, "ttft_p50", 0.40677, NIM),
    Reference("Llama 3.3 70B", LLAMA_31_70B, "H100", 2, "fp8", 5000, 500, 1, 40, "tpot_p50", 0.01858, NIM),
    Reference("Llama 3.3 70B", LLAMA_31_70B, "H100", 2, "fp8", 5000, 500, 1, 40, "output_throughput", 51.67, NIM),
    Reference("Llama 3.3 70B", LLAMA_31_70B, "H100", 2, "fp8", 5000, 500, 50, 400, "ttft_p50", 0.83451, NIM),
    Reference("Llama 3.3 70B", LLAMA_31_70B, "H100", 2, "fp8", 5000, 500, 50, 400, "tpot_p50", 0.05973, NIM),
    Reference("Llama 3.3 70B", LLAMA_31_70B, "H100", 2, "fp8", 5000, 500, 50, 400, "output_throughput", 814.37, NIM),
]  # fmt: skip


def predict(reference: Reference) -> float:
    from tokenworks.model.config import ModelConfig
    from tokenworks.plan.fast import FastEngine, run_replica
    from tokenworks.plan.fast_load import FastLoad, Sends
    from tokenworks.plan.fast_results import summarize_fast
    from tokenworks.plan.fast_workload import from_lengths
    from tokenworks.plan.latency import DatasheetLatency
    from tokenworks.plan.linear_step import LinearStep

    config = ModelConfig.from_hf_dict(reference.config)
    latency = DatasheetLatency(reference.gpu, config, reference.tp, precision=reference.precision)
    block = 32
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * latency.kv_bytes
    blocks = int(latency.kv_cache_bytes(0.9) // (per_token / reference.tp * block))
    engine = FastEngine(blocks, block, max_num_batched_tokens=8192, max_num_seqs=2048)
    requests = from_lengths(str(reference.inputs), str(reference.outputs), reference.requests, block)
    load = FastLoad(reference.requests, concurrency=reference.concurrency)
    summary = summarize_fast(run_replica(engine, LinearStep.of(latency), requests, Sends(load)))
    return {
        "output_throughput": summary.output_throughput,
        "ttft_p50": summary.ttft.p50,
        "tpot_p50": summary.tpot.p50,
    }[reference.metric]


def main() -> None:
    from tokenworks.plan.hardware import Catalog

    a = Catalog.load().assumptions
    print(f"assumptions (not tuned): {a.flops_efficiency:g} of peak FLOP/s, {a.bandwidth_efficiency:g} of HBM "
          f"bandwidth, {a.step_overhead_seconds * 1e3:g} ms a step, {a.chunk_overhead_seconds * 1e6:g} us a request")  # fmt: skip
    header = (
        f"{'model':<14} {'GPU':<5} {'tp':>2} {'prec':<4} {'in/out':>9} {'conc':>5} {'metric':<18} {'published':>10} "
    )
    print(header + f"{'predicted':>10} {'error':>8}  source")
    errors = []
    for ref in REFERENCES:
        predicted = predict(ref)
        error = (predicted - ref.published) / ref.published
        errors.append(abs(error))
        scale, unit = (1e3, "ms") if ref.metric != "output_throughput" else (1, "")
        print(f"{ref.model:<14} {ref.gpu:<5} {ref.tp:>2} {ref.precision:<4} {f'{ref.inputs}/{ref.outputs}':>9} "
              f"{ref.concurrency:>5} {ref.metric + (' ' + unit if unit else ''):<18} {ref.published * scale:>10,.1f} "
              f"{predicted * scale:>10,.1f} {error:>+8.1%}  {ref.source}")  # fmt: skip
    errors.sort()
    print(f"median absolute error {errors[len(errors) // 2]:.1%}, largest {errors[-1]:.1%} over {len(errors)} figures")


if __name__ == "__main__":
    main()
