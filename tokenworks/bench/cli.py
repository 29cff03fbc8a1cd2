"""`tokenworks bench`: run, sweep, capacity and compare, against any OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(
    name="bench",
    help="Measure an OpenAI-compatible endpoint: latency, throughput, goodput, cost and energy per token.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app)


URL = typer.Option(..., "--url", help="The endpoint, e.g. http://127.0.0.1:8000 (with or without /v1).")
MODEL = typer.Option(None, "--model", help="The model to ask for (default: the endpoint's only model).")
API_KEY = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="Bearer token, when the endpoint needs one.")
TOKENIZER = typer.Option(
    None, "--tokenizer", help="The model's tokenizer (directory or tokenizer.json) for exact prompt lengths."
)
API = typer.Option("chat", "--api", help="chat or completions.")
WORKLOAD = typer.Option("synthetic", "--workload", help="synthetic, shared-prefix, multi-turn or jsonl.")
INPUT_TOKENS = typer.Option("128", "--input-tokens", help="Prompt length: 128, 64:256 (uniform) or normal:128,32.")
OUTPUT_TOKENS = typer.Option("128", "--output-tokens", help="Output length, in the same forms.")
NUM_PREFIXES = typer.Option(4, "--num-prefixes", help="shared-prefix: distinct system prompts (K).")
QUESTIONS = typer.Option(8, "--questions-per-prefix", help="shared-prefix: questions per system prompt (M).")
PREFIX_TOKENS = typer.Option(512, "--prefix-tokens", help="shared-prefix: tokens of each system prompt.")
SESSIONS = typer.Option(8, "--sessions", help="multi-turn: conversations.")
TURNS = typer.Option(4, "--turns", help="multi-turn: turns per conversation.")
INPUT_FILE = typer.Option(None, "--input-file", help='jsonl: one {"prompt": ...} or {"messages": [...]} per line.')
TEMPERATURE = typer.Option(
    None, "--temperature", help="Sampling temperature of every request (0: greedy); default: the server's."
)
NO_STREAM = typer.Option(False, "--no-stream", help="Ask for whole responses (TTFT = E2E).")
FREE_LENGTH = typer.Option(
    False, "--free-output-length", help="Do not send ignore_eos/min_tokens (for endpoints that reject them)."
)
ARRIVAL = typer.Option("poisson", "--arrival", help="Open-loop arrivals: poisson or gamma.")
BURSTINESS = typer.Option(1.0, "--burstiness", help="Gamma shape: below 1 burstier, above 1 more regular.")
DURATION = typer.Option(None, "--duration", help="Seconds of load per point instead of a request count.")
WARMUP = typer.Option(2, "--warmup-requests", help="Requests sent first and left out of every figure.")
TIMEOUT = typer.Option(600.0, "--timeout", help="Seconds one request may take.")
SEED = typer.Option(0, "--seed", help="Seed of the prompts and the arrival schedule.")
SLO_OPTION = typer.Option(None, "--slo", help="Service-level objectives, e.g. ttft=200ms,tpot=50ms,e2e=5s.")
HARDWARE = typer.Option("CPU host", "--hardware", help="The price-book entry of the hardware serving.")
DEVICES = typer.Option(1.0, "--devices", help="Devices serving the endpoint (GPUs; a CPU host is 1).")
DEVICE_LABEL = typer.Option("host", "--device-label", help="What a device is, for per-device figures (gpu, host).")
PRICE_BOOK = typer.Option(None, "--price-book", help="A TOML price book extending the packaged one.")
OUT = typer.Option(Path("bench-results"), "--out", "-o", help="The results directory.")


def _workload(api, workload, input_tokens, output_tokens, num_prefixes, questions, prefix_tokens, sessions, turns,
              input_file, temperature):  # fmt: skip
    from tokenworks.bench.workloads import WorkloadOptions

    return WorkloadOptions(
        kind=workload, api=api, input_tokens=input_tokens, output_tokens=output_tokens, num_prefixes=num_prefixes,
        questions_per_prefix=questions, prefix_tokens=prefix_tokens, sessions=sessions, turns=turns,
        input_file=input_file, temperature=temperature,
    )  # fmt: skip


def _common(url, model, api_key, tokenizer, no_stream, free_length, slo, hardware, devices, device_label, price_book):  # fmt: skip
    from tokenworks.bench.runner import Accounting, Target
    from tokenworks.bench.slo import SLO

    _raise_open_file_limit()
    target = Target(url, model, api_key, tokenizer, stream=not no_stream, enforce_output_length=not free_length)
    accounting = Accounting(hardware=hardware, devices=devices, device_label=device_label, price_book=price_book)
    return target, (SLO.parse(slo) if slo else None), accounting


@bench_app.command("run")
def run(
    url: str = URL, model: str = MODEL, api_key: str = API_KEY, tokenizer: Path = TOKENIZER,
    api: str = API, workload: str = WORKLOAD, input_tokens: str = INPUT_TOKENS, output_tokens: str = OUTPUT_TOKENS,
    num_prefixes: int = NUM_PREFIXES, questions_per_prefix: int = QUESTIONS, prefix_tokens: int = PREFIX_TOKENS,
    sessions: int = SESSIONS, turns: int = TURNS, input_file: Path = INPUT_FILE, temperature: float = TEMPERATURE,
    no_stream: bool = NO_STREAM, free_output_length: bool = FREE_LENGTH,
    concurrency: int = typer.Option(None, "--concurrency", help="Closed loop: requests in flight (open loop: a cap)."),
    request_rate: float = typer.Option(None, "--request-rate", help="Open loop: requests per second."),
    arrival: str = ARRIVAL, burstiness: float = BURSTINESS,
    num_requests: int = typer.Option(None, "--num-requests", help="Measured requests (default: 64 unless --duration)."),
    duration: float = DURATION, warmup_requests: int = WARMUP, timeout: float = TIMEOUT, seed: int = SEED,
    slo: str = SLO_OPTION, hardware: str = HARDWARE, devices: float = DEVICES, device_label: str = DEVICE_LABEL,
    price_book: Path = PRICE_BOOK, out: Path = OUT,
) -> None:  # fmt: skip
    """Measure one load level (closed loop with --concurrency, open loop with --request-rate)."""
    from tokenworks.bench.loadgen import LoadOptions
    from tokenworks.bench.sweep import SweepPlan

    target, objective, accounting = _common(
        url, model, api_key, tokenizer, no_stream, free_output_length, slo, hardware, devices, device_label, price_book
    )
    options = _workload(api, workload, input_tokens, output_tokens, num_prefixes, questions_per_prefix, prefix_tokens,
                        sessions, turns, input_file, temperature)  # fmt: skip
    if concurrency is None and request_rate is None:
        concurrency = 1
    if num_requests is None and duration is None:
        num_requests = 64
    load = LoadOptions(
        concurrency=concurrency, request_rate=request_rate, arrival=arrival, burstiness=burstiness,
        num_requests=num_requests, duration=duration, warmup_requests=warmup_requests, timeout=timeout, seed=seed,
    )  # fmt: skip
    load.validate()
    options.validate()
    # One point is a sweep of one level: same measurement, same files.
    plan = SweepPlan(
        concurrencies=[concurrency] if concurrency else [],
        rates=[request_rate] if request_rate else None,
        io_pairs=[(str(options.input_tokens), str(options.output_tokens))],
        requests_per_point=num_requests or 1,
        duration=duration,
        stop_when_saturated=False,
    )
    _finish(out, asyncio.run(_sweep(target, options, load, plan, objective, accounting)), options, load, objective,
            accounting, "tokenworks bench run")  # fmt: skip


@bench_app.command("sweep")
def sweep(
    url: str = URL, model: str = MODEL, api_key: str = API_KEY, tokenizer: Path = TOKENIZER,
    api: str = API, workload: str = WORKLOAD, input_tokens: str = INPUT_TOKENS, output_tokens: str = OUTPUT_TOKENS,
    lengths: list[str] = typer.Option(
        None, "--lengths", help="IN/OUT length pairs to sweep, repeatable, e.g. --lengths 128/128 --lengths 1024/64."
    ),
    num_prefixes: int = NUM_PREFIXES, questions_per_prefix: int = QUESTIONS, prefix_tokens: int = PREFIX_TOKENS,
    sessions: int = SESSIONS, turns: int = TURNS, input_file: Path = INPUT_FILE, temperature: float = TEMPERATURE,
    no_stream: bool = NO_STREAM, free_output_length: bool = FREE_LENGTH,
    concurrency: str = typer.Option("1,2,4,8,16,32,64", "--concurrency", help="Comma-separated levels."),
    request_rate: str = typer.Option(None, "--request-rate", help="Comma-separated rates: an open-loop sweep."),
    arrival: str = ARRIVAL, burstiness: float = BURSTINESS,
    requests_per_point: int = typer.Option(64, "--requests-per-point", help="At least 2x the concurrency is used."),
    duration: float = DURATION, warmup_requests: int = WARMUP, timeout: float = TIMEOUT, seed: int = SEED,
    no_stop: bool = typer.Option(False, "--no-stop", help="Measure every level even past saturation."),
    slo: str = SLO_OPTION, hardware: str = HARDWARE, devices: float = DEVICES, device_label: str = DEVICE_LABEL,
    price_book: Path = PRICE_BOOK, out: Path = OUT,
) -> None:  # fmt: skip
    """Sweep concurrency (or request rate) and length pairs until saturation; frontiers and charts."""
    from tokenworks.bench.loadgen import LoadOptions
    from tokenworks.bench.sweep import SweepPlan

    target, objective, accounting = _common(
        url, model, api_key, tokenizer, no_stream, free_output_length, slo, hardware, devices, device_label, price_book
    )
    options = _workload(api, workload, input_tokens, output_tokens, num_prefixes, questions_per_prefix, prefix_tokens,
                        sessions, turns, input_file, temperature)  # fmt: skip
    options.validate()
    rates = _numbers(request_rate, float, "--request-rate") if request_rate else None
    levels = _numbers(concurrency, int, "--concurrency") if concurrency else []
    pairs = [_pair(text) for text in lengths] if lengths else [(input_tokens, output_tokens)]
    plan = SweepPlan(levels, rates, pairs, requests_per_point, duration, stop_when_saturated=not no_stop)
    load = LoadOptions(
        arrival=arrival, burstiness=burstiness, warmup_requests=warmup_requests, timeout=timeout, seed=seed
    )
    _finish(out, asyncio.run(_sweep(target, options, load, plan, objective, accounting)), options, load, objective,
            accounting, "tokenworks bench sweep")  # fmt: skip


@bench_app.command("capacity")
def capacity(
    url: str = URL, model: str = MODEL, api_key: str = API_KEY, tokenizer: Path = TOKENIZER,
    api: str = API, workload: str = WORKLOAD, input_tokens: str = INPUT_TOKENS, output_tokens: str = OUTPUT_TOKENS,
    num_prefixes: int = NUM_PREFIXES, questions_per_prefix: int = QUESTIONS, prefix_tokens: int = PREFIX_TOKENS,
    sessions: int = SESSIONS, turns: int = TURNS, input_file: Path = INPUT_FILE, temperature: float = TEMPERATURE,
    no_stream: bool = NO_STREAM, free_output_length: bool = FREE_LENGTH,
    slo: str = typer.Option(..., "--slo", help="The objectives attainment is counted against."),
    low: float = typer.Option(0.5, "--low", help="Lowest request rate to try (requests/s)."),
    high: float = typer.Option(4.0, "--high", help="First upper rate; doubled while it still passes."),
    tolerance: float = typer.Option(0.1, "--tolerance", help="Stop when passing and failing rates are this close."),
    max_steps: int = typer.Option(8, "--max-steps", help="Points to measure at most."),
    requests_per_point: int = typer.Option(64, "--requests-per-point", help="Requests at each rate."),
    arrival: str = ARRIVAL, burstiness: float = BURSTINESS, warmup_requests: int = WARMUP, timeout: float = TIMEOUT,
    seed: int = SEED, hardware: str = HARDWARE, devices: float = DEVICES, device_label: str = DEVICE_LABEL,
    price_book: Path = PRICE_BOOK, out: Path = OUT,
) -> None:  # fmt: skip
    """Find the highest request rate at which at least 90% of requests meet the SLO (DistServe's capacity)."""
    from tokenworks.bench.loadgen import LoadOptions
    from tokenworks.bench.sweep import run_capacity

    target, objective, accounting = _common(
        url, model, api_key, tokenizer, no_stream, free_output_length, slo, hardware, devices, device_label, price_book
    )
    options = _workload(api, workload, input_tokens, output_tokens, num_prefixes, questions_per_prefix, prefix_tokens,
                        sessions, turns, input_file, temperature)  # fmt: skip
    options.validate()
    load = LoadOptions(
        arrival=arrival, burstiness=burstiness, warmup_requests=warmup_requests, timeout=timeout, seed=seed
    )
    console = Console()
    result, search = asyncio.run(
        run_capacity(target, options, load, objective, accounting, low, high, requests_per_point, console, tolerance,
                     max_steps)
    )  # fmt: skip
    found = {"capacity": {"requests_per_s": search.capacity, "bracketed": search.bracketed, "tried": search.points}}
    _finish(out, result, options, load, objective, accounting, "tokenworks bench capacity", found)
    if search.capacity is None:
        console.print(f"[bold]capacity[/]: none; even {low:g} requests/s misses {slo} for over 10% of requests")
    else:
        bound = "" if search.bracketed else " (a lower bound: every rate tried passed)"
        console.print(f"[bold]capacity[/]: {search.capacity:.3g} requests/s at >= 90% attainment of {slo}{bound}")


@bench_app.command("compare")
def compare(
    runs: list[Path] = typer.Argument(..., help="Results directories of earlier runs or sweeps."),
    names: list[str] = typer.Option(None, "--name", help="A name per run, in order (default: the model)."),
    out: Path = typer.Option(Path("bench-compare"), "--out", "-o", help="Where the overlay charts go."),
) -> None:
    """Overlay the frontiers of several runs or endpoints on one chart of each kind."""
    from tokenworks.bench.compare import write_comparison

    path = write_comparison(runs, names or None, out)
    Console().print(f"Comparison charts and page in [bold]{path}[/]")


async def _sweep(target, options, load, plan, objective, accounting):
    from tokenworks.bench.sweep import run_sweep

    return await run_sweep(target, options, load, plan, objective, accounting, Console())


def _finish(out, result, options, load, objective, accounting, command, extra=None) -> None:
    from tokenworks.bench.report import write_results

    files = write_results(out, result, options, load, objective, accounting, command, extra)
    console = Console()
    console.print(results_table(files.rows, {row["label"] for row in files.frontiers["throughput"]}))
    for point in result.points:
        for flag in point.flags:
            color = "red" if flag.severity == "error" else "yellow"
            console.print(f"[{color}]{flag.severity}[/] {point.label}: {flag.message}", highlight=False)
    for pair, reason in result.saturated.items():
        console.print(f"[dim]{pair}: stopped at saturation: {reason}[/]")
    energy = files.rows[0]["energy_label"] if files.rows else "estimated"
    console.print(f"Energy is {energy}; prices are assumptions from the price book in run.json.")
    console.print(f"Results in [bold]{out}[/]: run.json, requests.jsonl, points.csv, frontier.csv, report.html")


def results_table(rows: list[dict], frontier: set[str]) -> Table:
    table = Table(title="tokenworks bench")
    headers = ["point", "ok", "err", "out tok/s", "tok/s/user", "TTFT p50", "TTFT p99", "ITL p50", "TPOT p50",
               "goodput tok/s", "attain", "$/M out", "out tok/J"]  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header == "point" else "right")

    def ms(value):
        return "-" if value is None else f"{value * 1000:,.1f} ms"

    def number(value, form="{:,.1f}"):
        return "-" if value is None else form.format(value)

    for row in rows:
        mark = " *" if row["label"] in frontier else ""
        table.add_row(
            row["label"] + mark, str(row["completed"]), str(row["errors"]), number(row["output_throughput"]),
            number(row["interactivity"]), ms(row["ttft_p50_s"]), ms(row["ttft_p99_s"]), ms(row["itl_p50_s"]),
            ms(row["tpot_p50_s"]), number(row["goodput_tokens"]), number(row["slo_attainment"], "{:.0%}"),
            number(row["cost_usd_per_million_output_tokens"], "{:,.3f}"),
            number(row["energy_output_tokens_per_joule"], "{:,.2f}"),
        )  # fmt: skip
    table.caption = "* on the Pareto frontier (throughput per device against tokens/s per user)"
    return table


def _raise_open_file_limit() -> None:
    """Each request in flight holds a socket: an open-loop burst past the soft limit (often 1,024)
    would fail with 'too many open files', so take the hard limit the system allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # a limit we may not raise is kept
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _numbers(text: str, kind: type, option: str) -> list:
    from tokenworks.errors import BenchError

    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BenchError(f"{option} takes comma-separated numbers, e.g. 1,2,4; got {text!r}") from None
    if not values:
        raise BenchError(f"{option} needs at least one value")
    return values


def _pair(text: str) -> tuple[str, str]:
    from tokenworks.errors import BenchError

    input_tokens, slash, output_tokens = text.partition("/")
    if not slash or not input_tokens or not output_tokens:
        raise BenchError(f"--lengths takes IN/OUT, e.g. 128/128 or 64:256/128; got {text!r}")
    return input_tokens.strip(), output_tokens.strip()
