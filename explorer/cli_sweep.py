"""``explorer sweep``: a temperature-sensitivity run from the terminal, written to the same store."""

from __future__ import annotations

import argparse
import sys
import threading

from explorer.analyses.temperature import TemperatureStudy, resume_run
from explorer.data.questions import DEFAULT_QUESTIONS
from explorer.data.store import default_db_path
from explorer.errors import InputError
from explorer.progress import Cancelled, Progress


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="explorer sweep", description="Sample answers across temperatures and "
                                "store every uncertainty measure (resumable).")
    p.add_argument("--model", default="", help="Hugging Face id or path (default: SmolLM2-135M-Instruct)")
    p.add_argument("--questions", default=str(DEFAULT_QUESTIONS), help="CSV / JSONL / Parquet with a 'question' column")
    p.add_argument("--max-questions", type=int, default=20)
    p.add_argument("--temperatures", default="0.3,0.7,1.0,1.4", help="comma-separated, increasing")
    p.add_argument("--samples", type=int, default=10, help="answers per question per temperature (N >= 2)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-inv-entropy", action="store_true")
    p.add_argument("--no-p-true", action="store_true")
    p.add_argument("--db", default=str(default_db_path()), help="DuckDB results file")
    p.add_argument("--resume", metavar="RUN_ID", help="finish a stopped run")
    return p


def _bar(progress: Progress, done: threading.Event) -> None:
    while not done.wait(0.5):
        filled = int(progress.fraction * 30)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {progress.fraction:6.1%} {progress.text[:60]:60s}")
        sys.stderr.flush()


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    progress, done = Progress(), threading.Event()
    threading.Thread(target=_bar, args=(progress, done), daemon=True).start()
    try:
        if args.resume:
            run_id = resume_run(args.db, args.resume, progress)
        else:
            temps = [float(t) for t in args.temperatures.split(",") if t.strip()]
            study = TemperatureStudy(model_name=args.model, questions_path=args.questions,
                                     max_questions=args.max_questions, temperatures=temps, n_samples=args.samples,
                                     max_new_tokens=args.max_new_tokens, seed=args.seed,
                                     with_inv_entropy=not args.no_inv_entropy, with_p_true=not args.no_p_true,
                                     db_path=args.db)
            study.validate()
            print(f"{study.generations(len(study.questions()))} generations to do", file=sys.stderr)
            run_id = study.run(progress)
    except (InputError, ValueError) as err:
        done.set()
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        done.set()
        print("\nstopped; finished batches are stored: rerun with --resume <run id> (see the runs list)", file=sys.stderr)
        return 130
    done.set()
    print(f"\nrun {run_id} stored in {args.db}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
