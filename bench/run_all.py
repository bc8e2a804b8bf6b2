"""Every benchmark in one command: one table, one machine line, ``bench/results.json``.

    python bench/run_all.py [--device cpu|cuda] [--only NAME] [--full] [--browser] [--force] [--markdown]

Runs ``run(device, quick=True)`` of every ``bench/bench_*.py`` module (``--full``: quick=False) in this
process, one module after another, and prints one table (bench, case, ours, baseline, ratio, error;
ratio = baseline / ours, > 1: ours is faster) and the machine (cores, torch threads, torch version,
load average at the start and the end). Modules without ``run`` are listed as skipped.

Figures are only written when the machine was quiet: if the 1-minute load average at the start, or at
the end once our own threads' load has settled (:func:`settled_load`), is above the number of cores,
nothing is written and the exit status is 2, unless ``--force`` (the output and the file then say that
the run was under load). ``--device cuda`` runs the kernels on
the GPU against the same CPU code and the peers; without a CUDA device it prints "no CUDA device:
skipped" and exits 0. ``--browser`` adds the browser benchmarks (a served app and Chromium): the slider
ones run as their own scripts, their printed p50/p95 parsed; ``bench_server`` (many sessions, a job,
churn) through its ``run``. ``--markdown`` prints the table as Markdown.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import result, table  # noqa: E402

BROWSER = {"bench_slider_latency": 0.300, "bench_diversity_slider": 0.050}  # module -> aim for p95 (s)
BROWSER_RUN = ("bench_server",)   # browser benchmarks with their own run(device, quick): only with --browser
RESULTS = BENCH_DIR / "results.json"
SETTLE_S = 150   # an exponentially decaying 1-minute average falls from 2x the cores to 1x in about 45 s


def modules(only: str | None, browser: bool) -> list[str]:
    names = sorted(path.stem for path in BENCH_DIR.glob("bench_*.py"))
    if only:
        wanted = only if only.startswith("bench_") else f"bench_{only}"
        if wanted not in names:
            raise SystemExit(f"no benchmark {only!r}; choose one of {', '.join(n.removeprefix('bench_') for n in names)}")
        return [wanted]
    return [name for name in names if browser or (name not in BROWSER and name not in BROWSER_RUN)]


def run_module(name: str, device: str, quick: bool) -> tuple[list[dict], str]:
    """The module's rows and a status line."""
    if name in BROWSER:
        return run_browser(name, device)
    try:
        module = importlib.import_module(f"bench.{name}")
    except Exception as error:  # a module whose dependencies are missing must not stop the others
        return [], f"skipped: import failed ({type(error).__name__}: {error})"
    if not hasattr(module, "run"):
        return [], "skipped: no run(device, quick)"
    try:
        rows = module.run(device=device, quick=quick)
    except Exception as error:
        traceback.print_exc()
        return [], f"failed: {type(error).__name__}: {error}"
    return rows, f"{len(rows)} case(s)" if rows else "no cases on this device"


def run_browser(name: str, device: str) -> tuple[list[dict], str]:
    """A browser benchmark as its own script; every "p50 ... ms, p95 ... ms" line it prints becomes a row
    whose ours is the p95 and whose baseline is the aim."""
    if device != "cpu":
        return [], "skipped: browser benchmarks run on the CPU"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(BENCH_DIR / f"{name}.py")], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    rows = []
    for line in done.stdout.splitlines():
        found = re.search(r"p50 (\d+(?:\.\d+)?) ms, p95 (\d+(?:\.\d+)?) ms", line)
        if found:
            p50, p95 = float(found.group(1)) / 1e3, float(found.group(2)) / 1e3
            rows.append(result(name.removeprefix("bench_"), line.split(":")[0], p95, "aim for p95", BROWSER[name],
                               None, f"p50 {p50 * 1e3:.0f} ms; {line.strip()}"))
    status = f"{len(rows)} case(s)" if rows else f"failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    return rows, status


def settled_load(cores: int, wait_s: float = SETTLE_S) -> float:
    """The 1-minute load average once our own work has stopped: it includes the benchmarks' own
    threads (two busy torch threads alone make 2 on 2 cores), so it is read again every 5 s, up to
    ``wait_s``, until it falls to the core count; another job on the machine keeps it above."""
    deadline = time.monotonic() + wait_s
    load = os.getloadavg()[0]
    while load > cores and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


def machine(device: str) -> dict:
    info = {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", help="one module, e.g. vendi or bench_vendi")
    parser.add_argument("--full", action="store_true", help="run(quick=False): the full sizes (much longer)")
    parser.add_argument("--browser", action="store_true", help="also the browser benchmarks (sliders, server load)")
    parser.add_argument("--force", action="store_true", help="write the figures even when the machine is loaded")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    names = modules(args.only, args.browser)
    info = machine(args.device)
    info["load_start"] = os.getloadavg()[0]
    started = time.perf_counter()
    rows, statuses = [], {}
    for name in names:
        print(f"[{time.perf_counter() - started:6.0f} s] {name} ...", flush=True)
        module_rows, statuses[name] = run_module(name, args.device, quick=not args.full)
        rows += module_rows
        print(f"           {statuses[name]}", flush=True)
    info["seconds"] = round(time.perf_counter() - started, 1)
    info["load_end_of_work"] = os.getloadavg()[0]
    info["load_end"] = settled_load(info["cores"])
    loaded = max(info["load_start"], info["load_end"]) > info["cores"]
    print()
    print(table(rows, markdown=args.markdown))
    skipped = {name: status for name, status in statuses.items() if not status.endswith("case(s)")}
    for name, status in skipped.items():
        print(f"{name}: {status}")
    print(f"\nmachine: {info['cores']} cores, {info['torch_threads']} torch threads, torch {info['torch']}, "
          f"device {args.device}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}; load average "
          f"{info['load_start']:.2f} at start, {info['load_end_of_work']:.2f} as the last benchmark ended, "
          f"{info['load_end']:.2f} once settled (the quiet check); {info['seconds']:.0f} s"
          + ("; UNDER LOAD (above the core count)" if loaded else ""))
    if loaded and not args.force:
        print(f"not written: the load average was above the {info['cores']} cores at the start or the end, so the "
              "times are not figures; rerun on a quiet machine (or --force to write them marked as under load)")
        return 2
    RESULTS.write_text(json.dumps({"machine": info, "under_load": loaded, "quick": not args.full,
                                   "skipped": skipped, "rows": rows}, indent=1) + "\n")
    print(f"written: {RESULTS.relative_to(ROOT)}" + (" (marked as measured under load)" if loaded else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
