"""Training throughput: tokenworks' training step against a plain PyTorch loop over transformers.

Both train the same shape on the same random token batches with AdamW (same hyperparameters),
gradient clipping and float32 on CPU (bf16 autocast on a GPU that has it, for both). The
tokenworks side is `TrainLoop.train_step` itself, the step `tokenworks train` runs; the
reference is the loop everyone writes:

    loss = LlamaForCausalLM(input_ids, labels=labels).loss; loss.backward(); clip; AdamW.step()

Warm-up steps, then `--repeats` timed rounds of `--steps` steps, alternating the two
implementations round by round so background load hits both alike; each side's figure is its
median round. Model FLOP/s is 6 x matmul weights + causal attention per token (see
tokenworks.train.records.flops_per_token), against the measured float32 matmul peak.

    .venv/bin/python benchmarks/train_throughput.py                 # default preset and small
    .venv/bin/python benchmarks/train_throughput.py --preset tiny --batch-size 16 --context 256
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tokenworks.model import CausalLM, preset_config
from tokenworks.train.checkpoint import Progress
from tokenworks.train.config import DEFAULT_PRESET, LoopConfig, OptimConfig
from tokenworks.train.distributed import DistInfo
from tokenworks.train.loop import TrainLoop
from tokenworks.train.optim import build_optimizer
from tokenworks.train.records import flops_per_token, measure_matmul_peak

# (preset, batch size, context): the default preset at its default training batch, and the ~100M shape at a
# batch that keeps a CPU step to seconds.
DEFAULT_CASES = [(DEFAULT_PRESET, 8, 256), ("small", 4, 256)]


class RandomBatches:
    """The same seeded random token batches for both sides."""

    def __init__(self, vocab_size: int, context: int, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.vocab_size, self.context = vocab_size, context

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, self.vocab_size, (batch_size, self.context + 1), generator=self.generator)
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        return {}


def tokenworks_step(config, batch_size: int, context: int, device: torch.device) -> tuple[Callable[[], None], object]:
    model = CausalLM(config).init_weights(0).to(device)
    loop_config = LoopConfig(context=context, batch_size=batch_size, max_steps=10**9, optim=OptimConfig(warmup_steps=0))
    optimizer = build_optimizer(model, loop_config.optim, device)
    loop = TrainLoop(
        model, optimizer, RandomBatches(config.vocab_size, context), [], loop_config, device, DistInfo(),
        save=lambda progress: None, metrics=None,
    )  # fmt: skip
    progress = Progress(horizon=10**9)
    return lambda: loop.train_step(progress), model


def transformers_step(config, batch_size: int, context: int, device: torch.device) -> Callable[[], None]:
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**config.to_hf_dict())
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).to(device).train()
    optim = OptimConfig()
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=0.1)
    batches = RandomBatches(config.vocab_size, context)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def step() -> None:
        x, y = batches.next_batch(batch_size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x.to(device)).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed_round(step: Callable[[], None], steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_case(preset: str, batch_size: int, context: int, args, device: torch.device, peak: float) -> dict:
    config = preset_config(preset, args.vocab_size)
    ours, model = tokenworks_step(config, batch_size, context, device)
    theirs = transformers_step(config, batch_size, context, device)
    for _ in range(args.warmup):
        ours()
        theirs()
    tokens = batch_size * context * args.steps
    rates: dict[str, list[float]] = {"tokenworks": [], "transformers": []}
    for _ in range(args.repeats):
        rates["tokenworks"].append(tokens / timed_round(ours, args.steps, device))
        rates["transformers"].append(tokens / timed_round(theirs, args.steps, device))
    ours_rate = statistics.median(rates["tokenworks"])
    theirs_rate = statistics.median(rates["transformers"])
    per_token = flops_per_token(model, config, context)
    row = {
        "preset": preset, "parameters": config.num_parameters(), "batch": batch_size, "context": context,
        "tokenworks": ours_rate, "transformers": theirs_rate, "ratio": ours_rate / theirs_rate,
        "mfu_tokenworks": per_token * ours_rate / peak, "mfu_transformers": per_token * theirs_rate / peak,
    }  # fmt: skip
    print(
        f"{preset}: {config.num_hidden_layers} layers x {config.hidden_size} hidden, "
        f"{config.num_parameters() / 1e6:.1f}M parameters, batch {batch_size} x {context} tokens; rounds "
        f"tokenworks {[round(r) for r in rates['tokenworks']]}, transformers {[round(r) for r in rates['transformers']]}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="one preset instead of the default cases")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=8192, help="the default corpus' tokenizer")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per side (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    cases = [(args.preset, args.batch_size, args.context)] if args.preset else DEFAULT_CASES
    peak = measure_matmul_peak(device, seconds=1.0)
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)  # fmt: skip
    rows = [run_case(preset, batch, context, args, device, peak) for preset, batch, context in cases]
    header = f"{'preset':<8} {'params':>8} {'batch x T':>10} {'tokenworks tok/s':>17} {'transformers tok/s':>19} {'ratio':>6} {'MFU tw':>7} {'MFU hf':>7}"
    print(header)
    for r in rows:
        print(
            f"{r['preset']:<8} {r['parameters'] / 1e6:>7.1f}M {r['batch']:>4} x {r['context']:<3} {r['tokenworks']:>17,.0f} "
            f"{r['transformers']:>19,.0f} {r['ratio']:>5.2f}x {r['mfu_tokenworks']:>7.1%} {r['mfu_transformers']:>7.1%}"
        )


if __name__ == "__main__":
    main()
