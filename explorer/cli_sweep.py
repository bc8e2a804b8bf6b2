"""``explorer sweep``: a temperature-sensitivity run from the terminal, written to the same store.

The run id is printed as soon as the run exists, so a sweep killed or crashed mid-run can be finished
with ``--resume RUN_ID`` (every batch stored before the stop is kept, none is drawn twice). On a
terminal the progress is a bar; in a log file (stderr not a terminal) it is one line per step.
"""

from __future__ import annotations

import argparse
import sys
import threading

import param

from explorer.analyses.runs import list_runs
from explorer.analyses.temperature import TemperatureAnalysis, parse_temperatures, resume_run
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


class _LineProgress(Progress):
    """Progress that writes one line per new step (for logs: stderr is not a terminal)."""

    def update(self, done, total=1.0, text=None):
        changed = text is not None and text != self.text
        super().update(done, total, text)
        if changed:
            print(f"[{self.fraction:6.1%}] {text}", file=sys.stderr, flush=True)


def _bar(progress: Progress, done: threading.Event) -> None:
    while not done.wait(0.5):
        filled = int(progress.fraction * 30)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {progress.fraction:6.1%} {progress.text[:60]:60s}")
        sys.stderr.flush()


def _started(db: str):
    def report(run_id: str) -> None:
        print(f"run {run_id} started in {db}", file=sys.stderr, flush=True)
    return report


def _list(db: str) -> int:
    runs = list_runs(db)
    if runs.empty:
        print(f"no runs in {db}")
        return 0
    print(runs[["run_id", "created", "model", "status", "answers"]].to_string(index=False))
    return 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    done = threading.Event()
    if sys.stderr.isatty():
        progress = Progress()
        threading.Thread(target=_bar, args=(progress, done), daemon=True).start()
    else:
        progress = _LineProgress()
    try:
        if args.list:
            return _list(args.db_path)
        if args.resume:
            run_id = resume_run(args.db_path, args.resume, progress, on_start=_started(args.db_path))
        else:
            settings = {name: getattr(args, name) for name in TemperatureAnalysis.param
                        if name not in NOT_FLAGS and hasattr(args, name)}
            settings["temperatures"] = parse_temperatures(args.temperatures)
            study = TemperatureAnalysis(**settings)
            study.validate()
            print(f"{study.generations(len(study.questions()))} generations to do", file=sys.stderr, flush=True)
            run_id = study.run(progress, on_start=_started(args.db_path))
    except (InputError, ValueError) as err:
        done.set()
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        done.set()
        print("\nstopped; finished batches are stored: rerun with --resume <run id> (explorer sweep --list)",
              file=sys.stderr)
        return 130
    finally:
        done.set()
    print(f"\nrun {run_id} stored in {args.db_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
