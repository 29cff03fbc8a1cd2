"""What the HTTP process of `tokenworks serve` costs: its import time, start-up time and memory.

    .venv/bin/python benchmarks/serve_footprint.py [--model DIR] [--repeats 5]

Not a test and not run in CI. The serving front (FastAPI, tokenization, streaming) runs in one
process and the engine core in another; the front should not load torch, whose import takes
seconds and hundreds of MB. For each repeat it measures, on a random-weight checkpoint of the
`tiny` preset (serve_interop.py's, in .peers/bench-serve/model unless --model is given):
- import: `import tokenworks.serve.app` in a fresh interpreter, and whether torch came with it;
- start-up: `tokenworks serve` from launch to its first 200 on /health (the engine's start included);
- memory: resident set (VmRSS) of the HTTP process and of the engine-core process, once
  healthy and after 16 streamed completions, and whether libtorch is mapped in the HTTP process.
Medians over the repeats are printed last, one row per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_interop import WORK, build_model, free_port, wait_healthy  # the same tiny model as the serving race

IMPORT_PROBE = (
    "import sys, time; t = time.perf_counter(); import tokenworks.serve.app; "
    "print(time.perf_counter() - t, 'torch' in sys.modules)"
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def measure_import() -> tuple[float, bool]:
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True).stdout
    seconds, torch_loaded = out.split()
    return float(seconds), torch_loaded == "True"


def stream_completion(url: str) -> None:
    body = json.dumps({"prompt": "The Python language", "max_tokens": 32, "stream": True, "ignore_eos": True})
    request = urllib.request.Request(f"{url}/v1/completions", body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        for _ in response:
            pass


def measure_server(model: Path) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tokenworks", "serve", str(model), "--port", str(port), "--threads", "1"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(url, process, timeout=600, poll_s=0.05)
        healthy = time.perf_counter() - start
        engines = children(process.pid)
        result = {
            "startup_to_health_s": healthy,
            "http_rss_idle_mib": rss_mib(process.pid),
            "engine_rss_idle_mib": sum(rss_mib(pid) for pid in engines),
            "http_maps_libtorch": float(maps_torch(process.pid)),
        }
        for _ in range(16):
            stream_completion(url)
        result["http_rss_served_mib"] = rss_mib(process.pid)
        result["engine_rss_served_mib"] = sum(rss_mib(pid) for pid in engines)
        return result
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a checkpoint directory; default: a random tiny model")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = args.model or build_model(WORK / "model")
    rows: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        seconds, torch_loaded = measure_import()
        figures = {"import_s": seconds, "import_loads_torch": float(torch_loaded), **measure_server(model)}
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k}={v:.3f}" for k, v in figures.items()), flush=True)
        for key, value in figures.items():
            rows.setdefault(key, []).append(value)
    print(f"\ntokenworks serve footprint, {args.repeats} repeats, medians ({os.cpu_count()} CPUs, model {model})")
    for key, values in rows.items():
        print(f"{key:24s} {statistics.median(values):10.3f}")


if __name__ == "__main__":
    main()
