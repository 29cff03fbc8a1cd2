"""`tokenworks plan fleet`: the cheapest fleet per GPU for a model, a traffic forecast and SLOs.

Prints the best configuration per GPU and overall, the assumptions the answer rests on (the
efficiencies, the prices, and the price at which the runner-up would win), and draws each GPU's
frontier of $/Mtok against tokens/s per user as a PNG. No torch.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tokenworks.bench import cli as bench  # the same --slo option as `tokenworks bench`


def add_fleet(app: typer.Typer) -> None:
    app.command("fleet")(fleet)


def fleet(
    model: str = typer.Argument(..., help="A checkpoint directory or a Hugging Face config.json (the model's shape)."),
    request_rate: float = typer.Option(..., "--request-rate", help="The forecast: requests per second (Poisson)."),
    input_tokens: str = typer.Option("1024", "--input-tokens", help="Prompt tokens: N, LOW:HIGH or normal:MEAN,STD."),
    output_tokens: str = typer.Option("256", "--output-tokens", help="Output tokens, the same forms."),
    slo: str = bench.SLO_OPTION,
    hardware: str = typer.Option(None, "--hardware", help="GPUs to search, comma-separated (default: the catalog's)."),
    catalog_path: Path = typer.Option(None, "--catalog", help="A TOML file replacing or adding GPUs and assumptions."),
    precision: str = typer.Option("bf16", "--precision", help="Weights' precision: bf16, fp8 or fp4."),
    tp: str = typer.Option("1,2,4,8", "--tp", help="Tensor-parallel widths to try."),
    no_disaggregate: bool = typer.Option(False, "--no-disaggregate", help="Colocated replicas only (no P/D split)."),
    prefix_hit_rate: float = typer.Option(0.0, "--prefix-hit-rate", help="Of each prompt, found in the prefix cache."),
    requests: int = typer.Option(2000, "--requests", min=100, help="Requests simulated per replica and configuration."),
    attainment: float = typer.Option(0.9, "--attainment", help="The share of requests that must meet the SLOs."),
    chart: Path = typer.Option(Path("fleet-frontier.png"), "--chart", help="Where to draw the frontiers."),
) -> None:  # fmt: skip
    """Search GPUs, tensor parallelism, replicas and a prefill/decode split for the lowest $/Mtok meeting the SLOs."""
    from tokenworks.bench.slo import SLO
    from tokenworks.errors import PlanError
    from tokenworks.plan.fleet import Forecast, SearchOptions, load_model, plan_fleet
    from tokenworks.plan.hardware import Catalog

    if not slo:
        raise PlanError("give the SLOs to meet, e.g. --slo ttft=500ms,tpot=50ms")
    objective = SLO.parse(slo)
    catalog = Catalog.load(catalog_path)
    names = [name.strip() for name in hardware.split(",") if name.strip()] if hardware else None
    for name in names or []:
        catalog.gpu(name)  # an unknown name fails before any work, naming the known ones
    widths = tuple(bench._numbers(tp, int, "--tp"))
    config = load_model(model)
    forecast = Forecast(request_rate, input_tokens, output_tokens, prefix_hit_rate)
    options = SearchOptions(precision=precision, widths=widths, disaggregate=not no_disaggregate, requests=requests,
                            attainment=attainment)  # fmt: skip
    plan = plan_fleet(config, forecast, objective, catalog, names, options)
    console = Console()
    console.print(_table(plan, forecast, objective, config))
    if plan.overall is None:
        closest = max(plan.closest.values(), key=lambda c: c.attainment, default=None)
        hint = "" if closest is None else (
            f"; the closest: {closest.gpu} {closest.layout} x{closest.replicas} ({closest.gpus} GPUs), "
            f"{closest.attainment:.0%} of requests within them (TTFT p50 {closest.ttft_p50 * 1e3:,.0f} ms, "
            f"TPOT p50 {closest.tpot_p50 * 1e3:,.1f} ms)"
        )  # fmt: skip
        raise PlanError(f"no configuration meets {objective} for {options.attainment:.0%} of requests at "
                        f"{request_rate:g} requests/s{hint}")  # fmt: skip
    for line in assumptions(plan, catalog, options):
        console.print(line, highlight=False, markup=False)
    drawn = draw_frontiers(plan, chart, f"{model}: {forecast.request_rate:g} req/s, {input_tokens} in / "
                           f"{output_tokens} out, SLO {objective}")  # fmt: skip
    if drawn:
        console.print(f"frontiers drawn in [bold]{chart}[/]")


def _table(plan, forecast, objective, config) -> Table:
    table = Table(title=f"tokenworks plan fleet: {forecast.request_rate:g} req/s, {forecast.input_tokens} in / "
                  f"{forecast.output_tokens} out, SLO {objective} (simulated, datasheet)")  # fmt: skip
    for column in ("GPU", "layout", "GPUs", "TTFT p50 ms", "TPOT p50 ms", "within SLO", "$/Mtok", "$/M out",
                   "tok/s per MW", "tok/J (est.)", "bound by"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("GPU", "layout", "bound by") else "right")
    overall = plan.overall
    for name, candidate in sorted(plan.best.items(), key=lambda item: item[1].usd_per_million_tokens):
        layout = candidate.layout if candidate.decode else f"{candidate.replicas} x tp{candidate.tp}"
        mark = " (best)" if candidate is overall else ""
        table.add_row(
            name + mark, layout, str(candidate.gpus), f"{candidate.ttft_p50 * 1e3:,.0f}",
            f"{candidate.tpot_p50 * 1e3:,.1f}", f"{candidate.attainment:.1%}", f"{candidate.usd_per_million_tokens:,.3f}",
            f"{candidate.usd_per_million_output_tokens:,.3f}", f"{candidate.tokens_per_second_per_megawatt:,.0f}",
            f"{candidate.tokens_per_joule:,.1f}", "HBM bandwidth" if candidate.memory_bound else "FLOP/s",
        )  # fmt: skip
    for name, candidate in sorted(plan.closest.items()):
        table.add_row(f"{name} (none meets)", f"closest: {candidate.replicas} x tp{candidate.tp}"
                      if not candidate.decode else candidate.layout, str(candidate.gpus),
                      f"{candidate.ttft_p50 * 1e3:,.0f}", f"{candidate.tpot_p50 * 1e3:,.1f}",
                      f"{candidate.attainment:.1%}", "-", "-", "-", "-", "-")  # fmt: skip
    return table


def assumptions(plan, catalog, options) -> list[str]:
    """What the answer rests on: the efficiency assumptions, each price, and the price at which
    the runner-up GPU would match the best."""
    a = catalog.assumptions
    lines = [
        f"Assumed: {a.flops_efficiency:g} of peak dense {options.precision} FLOP/s, {a.bandwidth_efficiency:g} of peak "
        f"HBM bandwidth, {a.step_overhead_seconds * 1e3:g} ms a step (the catalog's [assumptions]; not measured).",
    ]  # fmt: skip
    ranked = sorted(plan.best.values(), key=lambda c: c.usd_per_million_tokens)
    for candidate in ranked:
        gpu = catalog.gpu(candidate.gpu)
        lines.append(f"  {gpu.name}: ${gpu.figure('usd_per_hour'):g}/GPU-hour ({gpu.figures['usd_per_hour'].source})")
    if len(ranked) >= 2:
        best, runner = ranked[0], ranked[1]
        price = catalog.gpu(runner.gpu).figure("usd_per_hour")
        tie = price * best.usd_per_million_tokens / runner.usd_per_million_tokens
        bound = "HBM bandwidth" if best.memory_bound else "FLOP/s"
        lines.append(
            f"The answer turns on price: {runner.gpu} would match {best.gpu} at ${tie:.2f}/GPU-hour (now ${price:g}); "
            f"{best.gpu}'s decode steps are bound by {bound}, so its efficiency assumption for it decides its speed."
        )  # fmt: skip
    return lines


def draw_frontiers(plan, path: Path, title: str) -> bool:
    """$/Mtok against tokens/s per user, every configuration tried that keeps up, a frontier per GPU."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    from tokenworks.bench.pareto import pareto_frontier

    points: dict[str, list] = {}
    for candidate in plan.tried:
        if candidate.attainment > 0 and candidate.tpot_p50 > 0:
            points.setdefault(candidate.gpu, []).append(candidate)
    if not points:
        return False
    figure, axes = plt.subplots(figsize=(8, 5))
    for name, candidates in sorted(points.items()):
        frontier = pareto_frontier(candidates, "interactivity", "usd_per_million_tokens", maximize_y=False)
        line = axes.plot([c.interactivity for c in frontier], [c.usd_per_million_tokens for c in frontier],
                         marker="o", label=name)[0]  # fmt: skip
        axes.scatter([c.interactivity for c in candidates], [c.usd_per_million_tokens for c in candidates],
                     color=line.get_color(), alpha=0.25, s=12)  # fmt: skip
    axes.set_xlabel("tokens/s per user (1 / median TPOT)")
    axes.set_ylabel("$ per million tokens (input + output)")
    axes.set_yscale("log")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return True
