"""`tokenworks bench compare`: several runs or endpoints on one chart of each frontier."""

from __future__ import annotations

import html
import json
from pathlib import Path

from tokenworks.bench.report import plot_frontiers, png_data_uri, read_points
from tokenworks.errors import BenchError


def write_comparison(runs: list[Path], names: list[str] | None, out: Path) -> Path:
    if names is not None and len(names) != len(runs):
        raise BenchError(f"give one --name per run: {len(runs)} runs, {len(names)} names")
    series: dict[str, list[dict]] = {}
    energy_labels = set()
    for index, directory in enumerate(runs):
        if not (directory / "points.csv").is_file() or not (directory / "run.json").is_file():
            raise BenchError(f"{directory} is not a results directory of tokenworks bench (no points.csv/run.json)")
        run = json.loads((directory / "run.json").read_text(encoding="utf-8"))
        name = names[index] if names else f"{run['endpoint']['model']} ({directory.name})"
        rows = read_points(directory)
        series[name] = rows
        energy_labels.update(row["energy_label"] for row in rows)
    out.mkdir(parents=True, exist_ok=True)
    devices = {row["device_label"] for rows in series.values() for row in rows}
    context = {"device": "/".join(sorted(devices)), "energy": "/".join(sorted(energy_labels))}
    charts = plot_frontiers(series, out, context)
    figures = "".join(
        f"<figure><img src='{png_data_uri(path)}' alt='{name}'></figure>" for name, path in charts.items()
    )
    listed = "".join(
        f"<li>{html.escape(name)}: {html.escape(str(path))}</li>" for name, path in zip(series, runs, strict=True)
    )
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tokenworks bench compare</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:80rem}img{max-width:38rem}</style>"
        f"</head><body><h1>tokenworks bench compare</h1><ul>{listed}</ul>{figures}</body></html>\n"
    )
    path = out / "compare.html"
    path.write_text(page, encoding="utf-8")
    return path
