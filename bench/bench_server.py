"""A team on one served Entropy Explorer (issue 11's targets): ``explorer serve`` on loopback, headless
Chromium sessions on every page, a long job in one of them, open/close churn with the server's memory.

    python bench/bench_server.py [--quick] [--sessions 4 8] [--moves 20] [--cycles 100]

The long version of ``tests/browser/test_load.py`` (same driver: ``tests/browser/load_driver.py``):

1. Idle opens: each page opened alone, ``--idle`` times, after the server's warm-up (target <= 2 s).
2. For each ``--sessions`` count N: N tabs (conformal, diversity, temperature, training, lens, then
   again in that order) open at once (target p95 <= 3 s for 4, <= 5 s for 8), then each moves its main
   widget ``--moves`` times, 0.3 s apart, all at once (target p95 <= 0.5 s for 4, <= 1 s for 8). With 4
   sessions a fifth one on the lens then generates again and again while the four move ``--moves``
   more times: per session, the median of its moves overlapping a generation minus its quiet median
   (target <= 0.2 s), for the whole move and for the server's share (websocket round trip).
3. Churn: ``--cycles`` session cycles (a tab opens a page, the five in turn, waits for its results,
   closes); the server's RSS after cycle 10 and after the last (target: within 100 MB), and again once
   the last sessions have been discarded (Bokeh frees a closed session 15-32 s later).

Each row of ``run()``: ``ours_s`` is the measured p95 (or the median delay), ``baseline`` the target and
``baseline_s`` its value, ``ratio`` = target / measured (> 1: the target is met). Prints p50 / p95 / max
per page and action, and the load average with every phase. The browsers run on the same machine as
the server: on 2 cores they take more CPU than the server does (see the test's xfail reasons).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from bench.common import result  # noqa: E402
from load_driver import (PAGES, Server, Session, Timings, churn, explorer_server, job_delays,  # noqa: E402
                         keep_generating, launch, load_average, move_all, percentile, settle, summary_line,
                         wait_warm)

ORDER = ("conformal", "diversity", "temperature", "training", "lens")
TARGETS_S = {"idle open": 2.0, ("open", 4): 3.0, ("interact", 4): 0.5, ("open", 8): 5.0, ("interact", 8): 1.0,
             "job delay": 0.2}
RSS_TARGET_MB = 100
WAIT_MS = 120_000
SETTLE_S = 40   # Bokeh discards a closed session 15-32 s after its tab closed


@dataclass
class Settings:
    sessions: tuple[int, ...] = (4, 8)
    moves: int = 20
    idle: int = 3
    cycles: int = 100


QUICK = Settings(sessions=(4,), moves=5, idle=1, cycles=10)


def _line(label: str, values: list[float]) -> str:
    return f"{label}: {summary_line(values)}"


def _row(case: str, values_ms: list[float], target, note: str) -> dict:
    """A row whose ``ours_s`` is the p95 of ``values_ms`` and whose baseline is ``TARGETS_S[target]``."""
    name = target if isinstance(target, str) else f"{target[0]}, {target[1]} sessions"
    return result("server", case, percentile(values_ms, 0.95) / 1e3, f"target ({name})", TARGETS_S[target], None,
                  f"p50 {percentile(values_ms, 0.5):.0f} ms, n={len(values_ms)}; {note}")


async def _idle_opens(browser, url: str, settings: Settings, timings: Timings, rows: list[dict]) -> None:
    for key in ORDER:
        for _ in range(settings.idle):
            session = Session(browser, url, key, timings, WAIT_MS)
            try:
                await session.open("open (idle)")
            finally:
                await session.close()
        values = timings.samples[(key, "open (idle)")]
        print(_line(f"{key} open alone", values) + f"; {load_average()}", flush=True)
        rows.append(_row(f"{key}: page open, alone", values, "idle open", load_average()))


async def _sessions(browser, url: str, n: int, settings: Settings, rows: list[dict]) -> None:
    timings = Timings()
    sessions = [Session(browser, url, ORDER[i % len(ORDER)], timings, WAIT_MS) for i in range(n)]
    try:
        await asyncio.gather(*(session.open() for session in sessions))
        opens = timings.all("open")
        print(_line(f"{n} sessions, opened at once", opens) + f"; {load_average()}", flush=True)
        rows.append(_row(f"{n} sessions: page open", opens, ("open", n), load_average()))
        await settle(sessions)   # the pages finish what they compute after their first results
        await move_all(sessions, settings.moves, "interact")
        moves = timings.all("interact")
        for key in sorted({s.key for s in sessions}):
            print("  " + _line(f"{key} move", timings.samples[(key, "interact")]) + "; server's share "
                  + summary_line(timings.samples.get((key, "interact (server)"), [])))
        print(_line(f"{n} sessions, every move", moves) + f"; {load_average()}", flush=True)
        rows.append(_row(f"{n} sessions: widget move", moves, ("interact", n), load_average()))
        if n == 4:
            await _job(browser, url, sessions, timings, settings, rows)
    finally:
        for session in sessions:
            await session.close()


async def _job(browser, url: str, movers: list[Session], timings: Timings, settings: Settings,
               rows: list[dict]) -> None:
    """A fifth session generates on the lens while the four move again."""
    lens, windows, done = Session(browser, url, "lens", timings, WAIT_MS), [], asyncio.Event()
    try:
        await lens.open("open (job session)")
        job = asyncio.create_task(keep_generating(lens, done, windows))
        await asyncio.sleep(1.0)
        await move_all(movers, settings.moves, "interact (job)")
        done.set()
        await job
    finally:
        await lens.close()
    keys = [s.key for s in movers]
    print(f"a lens session generating ({len(windows)} generations, {load_average()}): median of the moves during "
          "a generation vs quiet", flush=True)
    for suffix, what in (("", "whole move"), (" (server)", "server's share")):
        figures = job_delays(timings, keys, windows, suffix=suffix)
        for key, (quiet, busy, top, count) in figures.items():
            print(f"  {key} {what}: quiet {quiet:.0f} ms, during the job {busy:.0f} ms (+{busy - quiet:.0f}; max "
                  f"{top:.0f} ms, n={count})")
        if figures:
            worst = max(figures, key=lambda k: figures[k][1] - figures[k][0])
            quiet, busy, _, count = figures[worst]
            delay_s = max(busy - quiet, 1.0) / 1e3
            rows.append(result("server", f"4 sessions + a generation: worst delay, {what} ({worst})", delay_s,
                               "target (job delay)", TARGETS_S["job delay"], None,
                               f"median {quiet:.0f} -> {busy:.0f} ms, n={count}; {load_average()}"))


async def _churn(browser, server: Server, settings: Settings, rows: list[dict]) -> None:
    timings = Timings()
    after = await churn(browser, server.url, list(PAGES), settings.cycles, timings, server.rss_mb, WAIT_MS)
    reference = 10 if len(after) >= 20 else max(1, len(after) // 2)   # the target's: after the first 10
    first = after[reference - 1]
    print(_line(f"churn, {settings.cycles} cycles, page open", timings.all("open (churn)")) + f"; {load_average()}")
    print(f"RSS after cycle 1 {after[0]:.0f} MB, after cycle {reference} {first:.0f} MB, after cycle "
          f"{len(after)} {after[-1]:.0f} MB (max {max(after):.0f} MB)", flush=True)
    await asyncio.sleep(SETTLE_S if settings.cycles > 20 else 0)
    settled = server.rss_mb()
    if settings.cycles > 20:
        print(f"RSS {SETTLE_S} s after the last cycle (its sessions discarded): {settled:.0f} MB")
    rows.append(result("server", f"RSS growth, churn cycles {reference} -> {len(after)} (MB in note)", None,
                       f"target: <= {RSS_TARGET_MB} MB", None, None,
                       f"{after[-1] - first:+.0f} MB ({first:.0f} -> {after[-1]:.0f} MB; after settling "
                       f"{settled:.0f} MB; max {max(after):.0f} MB); {load_average()}"))


async def _bench(server: Server, settings: Settings) -> list[dict]:
    from playwright.async_api import async_playwright

    rows: list[dict] = []
    warmed = await wait_warm(server)
    print(f"server warm ({load_average()}); idle RSS {server.rss_mb():.0f} MB")
    for line in warmed.values():
        print("  " + line.strip())
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            await _idle_opens(browser, server.url, settings, Timings(), rows)
            for n in settings.sessions:
                await _sessions(browser, server.url, n, settings, rows)
            await _churn(browser, server, settings, rows)
        finally:
            await browser.close()
    return rows


def _run(settings: Settings) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-server-") as folder, \
            explorer_server(log=Path(folder) / "server.log", data_dir=Path(folder) / "data") as server:
        print(f"explorer serve at {server.url} (log {server.log}); {os.cpu_count()} cores; {load_average()}",
              flush=True)
        rows = asyncio.run(_bench(server, settings))
        final = server.rss_mb()
    print(f"server RSS at the end {final:.0f} MB; {load_average()}")
    return rows


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    """The cases above, one row per target (browser benchmarks run on the CPU: other devices give [])."""
    if device != "cpu":
        return []
    return _run(QUICK if quick else Settings())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 sessions, 5 moves, 10 churn cycles (about 2 min)")
    parser.add_argument("--sessions", type=int, nargs="+", default=None, help="session counts (default: 4 8)")
    parser.add_argument("--moves", type=int, default=None, help="widget moves per session and phase (default 20)")
    parser.add_argument("--idle", type=int, default=None, help="idle opens per page (default 3)")
    parser.add_argument("--cycles", type=int, default=None, help="churn cycles (default 100)")
    args = parser.parse_args()
    settings = QUICK if args.quick else Settings()
    settings = Settings(sessions=tuple(args.sessions or settings.sessions), moves=args.moves or settings.moves,
                        idle=args.idle or settings.idle, cycles=args.cycles or settings.cycles)
    from bench.common import table

    rows = _run(settings)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
