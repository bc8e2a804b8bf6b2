"""``explorer sweep``: a temperature-sensitivity run from the terminal, written to the same store.

The run id is printed as soon as the run exists, so a sweep killed or crashed mid-run can be finished
with ``--resume RUN_ID`` (every batch stored before the stop is kept, none is drawn twice). On a
terminal the progress is a tqdm bar (answers generated, rate, ETA; then the measures); in a log file
(stderr not a terminal) it is one line per step with the same counts. ``--cluster local:N`` or
``--scheduler tcp://HOST:8786`` samples on a Dask cluster (:mod:`explorer.analyses.distributed`);
the run ends by printing its TSU and evaluation tables with bootstrap intervals.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time

import param

from explorer.analyses.runs import RunResults, evaluation_display, list_runs, tsu_display
from explorer.analyses.temperature import PLACEMENT, TemperatureAnalysis, parse_temperatures, resume_run
from explorer.errors import InputError
from explorer.progress import Cancelled, Progress

#: settings whose flag keeps its historical short name; every other setting is ``--name-with-dashes``
FLAG_NAMES = {"model_name": "--model", "questions_path": "--questions", "n_samples": "--samples",
              "n_perturbations": "--perturbations", "db_path": "--db", "with_p_true": "--p-true",
              "with_inv_entropy": "--inv-entropy"}
NOT_FLAGS = ("name", "questions_upload")


def _flag(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _add_setting(p: argparse.ArgumentParser, name: str, parameter: param.Parameter, default) -> None:
    """One flag from one parameter of :class:`TemperatureAnalysis`: same default, same choices, its doc."""
    help_text = (parameter.doc or parameter.label or name).strip().replace("%", "%%").split("\n")[0]
    if isinstance(parameter, param.Boolean):
        p.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
    elif isinstance(parameter, param.List):
        p.add_argument(_flag(name), dest=name, default=",".join(f"{v:g}" for v in default),
                       help=help_text + " (comma-separated)")
    elif isinstance(parameter, param.Selector):
        p.add_argument(_flag(name), dest=name, choices=list(parameter.objects), default=default, help=help_text)
    else:
        kind = int if isinstance(parameter, param.Integer) else float if isinstance(parameter, param.Number) else str
        p.add_argument(_flag(name), dest=name, type=kind, default=default, help=help_text)


def parser() -> argparse.ArgumentParser:
    """Generated from :class:`TemperatureAnalysis`'s parameters, so the page and the CLI share every
    default (``--help`` shows them)."""
    p = argparse.ArgumentParser(prog="explorer sweep", description="Sample answers across temperatures and "
                                "store every uncertainty measure (resumable).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = TemperatureAnalysis()
    for name, parameter in TemperatureAnalysis.param.objects().items():
        if name not in NOT_FLAGS:
            _add_setting(p, name, parameter, getattr(defaults, name))
    p.add_argument("--resume", metavar="RUN_ID", help="finish a stopped or killed run")
    p.add_argument("--list", action="store_true", help="list the runs stored in --db and exit")
    return p


def _phase(text: str | None) -> str:
    return "measures" if text and text.startswith("measures") else "answers"


class _BarProgress(Progress):
    """A tqdm bar per phase: answers generated (rate, ETA; an upper bound when adaptive), then the
    (question, temperature) pairs scored."""

    def __init__(self):
        super().__init__()
        self._bar, self._unit = None, None

    def update(self, done, total=1.0, text=None):
        from tqdm import tqdm

        unit = _phase(text) if text is not None else self._unit
        if self._bar is None or unit != self._unit:
            self.close()
            self._bar = tqdm(total=total, unit=" " + ("(question, T)" if unit == "measures" else "answers"),
                             file=sys.stderr, dynamic_ncols=True, desc=unit)
            self._unit = unit
        self._bar.total = total
        self._bar.update(done - self._bar.n)
        if text is not None:
            self._bar.set_postfix_str(text[:60], refresh=False)
        super().update(done, total, text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _LineProgress(Progress):
    """One line per new step, with the counts, rate and ETA (for logs: stderr is not a terminal)."""

    def __init__(self):
        super().__init__()
        self._started, self._unit = time.monotonic(), None

    def update(self, done, total=1.0, text=None):
        changed = text is not None and text != self.text
        if text is not None and _phase(text) != self._unit:
            self._started, self._unit = time.monotonic(), _phase(text)
        super().update(done, total, text)
        if changed:
            elapsed = time.monotonic() - self._started
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = datetime.timedelta(seconds=round((total - done) / rate)) if rate > 0 else "?"
            print(f"[{self.fraction:6.1%}] {text} · {done:g}/{total:g} {self._unit}, {rate:.2f}/s, ETA {eta}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _started(db: str):
    def report(run_id: str) -> None:
        print(f"run {run_id} started in {db}", file=sys.stderr, flush=True)
    return report


def _dashboard(link: str) -> None:
    print(f"Dask dashboard: {link}", file=sys.stderr, flush=True)


def _list(db: str) -> int:
    runs = list_runs(db)
    if runs.empty:
        print(f"no runs in {db}")
        return 0
    print(runs[["run_id", "created", "model", "status", "answers"]].to_string(index=False))
    return 0


def report(db: str, run_id: str) -> str:
    """The run's TSU (with bootstrap intervals) and its evaluation table at every temperature, as text."""
    results = RunResults(db, run_id)
    summary = results.answers_summary()
    lines = [f"run {run_id}: {summary['answers']} answers"
             + (f" (adaptive: {summary['saved']:.0%} fewer than N for every question)" if summary["adaptive"] else "")]
    tsu = results.tsu_intervals()
    if not tsu.empty:
        lines += [f"\nTSU, % of questions whose uncertainty rises strictly ({results.confidence:.0%} bootstrap interval "
                  f"over questions):", tsu_display(tsu).to_string()]
    table = results.evaluation()
    if table.empty:
        lines.append("\nno evaluation: the questions have no reference answers")
        return "\n".join(lines)
    lines.append(f"\nEvaluation against correctness (wrong = the most probable answer is wrong; {results.confidence:.0%} "
                 f"bootstrap intervals over questions, {results.n_resamples} resamples):")
    for t, part in table.groupby("temperature", sort=True):
        lines += [f"\nT = {t:g}", evaluation_display(part.drop(columns="temperature")).drop(columns="note").to_string()]
        for note, measures in part[part["note"] != ""].groupby("note").groups.items():
            which = "every measure" if len(measures) == len(part) else ", ".join(measures)
            lines.append(f"  {which}: {note}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    progress = _BarProgress() if sys.stderr.isatty() else _LineProgress()
    placement = {name: getattr(args, name) for name in PLACEMENT}
    try:
        if args.list:
            return _list(args.db_path)
        if args.resume:
            run_id = resume_run(args.db_path, args.resume, progress, on_start=_started(args.db_path),
                                on_cluster=_dashboard, **placement)
        else:
            settings = {name: getattr(args, name) for name in TemperatureAnalysis.param
                        if name not in NOT_FLAGS and hasattr(args, name)}
            settings["temperatures"] = parse_temperatures(args.temperatures)
            study = TemperatureAnalysis(**settings)
            study.validate()
            print(f"{study.generations(len(study.questions()))} generations to do"
                  + (" at most (adaptive)" if study.adaptive else ""), file=sys.stderr, flush=True)
            run_id = study.run(progress, on_start=_started(args.db_path), on_cluster=_dashboard)
    except (InputError, ValueError) as err:
        progress.close()
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        progress.close()
        print("\nstopped; finished batches are stored: rerun with --resume <run id> (explorer sweep --list)",
              file=sys.stderr)
        return 130
    progress.close()
    print(f"\nrun {run_id} stored in {args.db_path}")
    print(report(args.db_path, run_id))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
