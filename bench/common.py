"""What the ``bench_*.py`` modules share: the result row of the ``run(device, quick)`` protocol that
``bench/run_all.py`` collects, side-by-side timing on a device, and the printed table."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import torch

KEYS = ("bench", "case", "ours_s", "baseline", "baseline_s", "ratio", "error", "note")


def result(bench: str, case: str, ours_s: float, baseline: str | None, baseline_s: float | None,
           error: float | None = None, note: str = "") -> dict:
    """One row: ``ratio = baseline_s / ours_s`` (> 1: ours is faster); ``error`` is the largest difference
    from the baseline or a float64 reference (None when there is nothing to compare)."""
    ratio = baseline_s / ours_s if baseline_s is not None and ours_s else None
    return {"bench": bench, "case": case, "ours_s": ours_s, "baseline": baseline, "baseline_s": baseline_s,
            "ratio": ratio, "error": None if error is None else float(error), "note": note}


def cuda_requested(device: str) -> bool:
    return str(device).startswith("cuda")


def no_cuda(device: str) -> bool:
    """True when ``device`` asks for CUDA and there is none (``run`` then returns [])."""
    return cuda_requested(device) and not torch.cuda.is_available()


def synchronise(device: str) -> None:
    if cuda_requested(device):
        torch.cuda.synchronize()


def timed(fn: Callable, repeats: int = 1, device: str = "cpu", warmup: bool = False) -> tuple[float, object]:
    """Best wall-clock seconds of ``repeats`` calls (after one untimed call when ``warmup``) and the last value."""
    value = fn() if warmup else None
    best = math.inf
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        value = fn()
        synchronise(device)
        best = min(best, time.perf_counter() - start)
    return best, value


def interleaved(functions: dict[str, Callable], repeats: int, device: str = "cpu") -> tuple[dict, dict]:
    """Best seconds and last value of each function, run in turns so that machine noise hits all alike."""
    times = {name: math.inf for name in functions}
    values = {}
    for _ in range(repeats):
        for name, fn in functions.items():
            seconds, values[name] = timed(fn, 1, device)
            times[name] = min(times[name], seconds)
    return times, values


def load_average() -> float:
    return os.getloadavg()[0]


def _cell(value, key: str) -> str:
    if value is None:
        return "-"
    if key in ("ours_s", "baseline_s"):
        if value < 1e-3:
            return f"{value * 1e6:.1f} us"
        return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"
    if key == "ratio":
        return f"{value:.2f}x"
    if key == "error":
        return f"{value:.1e}"
    return str(value)


COLUMNS = ("bench", "case", "ours_s", "baseline", "baseline_s", "ratio", "error")
HEADERS = ("bench", "case", "ours", "baseline", "baseline time", "ratio", "error")


def table(rows: list[dict], markdown: bool = False) -> str:
    """The rows as an aligned text table (or Markdown), notes on their own lines below each row."""
    cells = [[_cell(row.get(key), key) for key in COLUMNS] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(HEADERS) + " | note |", "|" + "---|" * (len(HEADERS) + 1)]
        lines += ["| " + " | ".join(line) + f" | {row.get('note', '')} |" for line, row in zip(cells, rows)]
        return "\n".join(lines)
    widths = [max(len(h), *(len(line[i]) for line in cells)) if cells else len(h) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths))]
    for line, row in zip(cells, rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths)))
        if row.get("note"):
            lines.append("    " + row["note"])
    return "\n".join(lines)


def print_run(run: Callable[[], list[dict]], device: str) -> list[dict]:
    """A benchmark's ``main``: the load average before and after, and ``run()``'s rows as one table."""
    print(f"load average before: {load_average():.1f} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    rows = run()
    print(table(rows) if rows else f"no {device} device: nothing measured")
    print(f"load average after: {load_average():.1f}")
    return rows
