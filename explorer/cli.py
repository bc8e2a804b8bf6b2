"""The ``explorer`` command: serve the app, prepare models, score a text, run a temperature sweep."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from explorer.data.paths import DATA_DIR_VARIABLE
from explorer.errors import InputError

APP = Path(__file__).resolve().parents[1] / "apps" / "entropy_explorer.py"
SETUP = APP.with_name("server_setup.py")


def serve_command(args) -> tuple[list[str], dict[str, str]]:
    """The ``panel serve`` command line and environment that ``explorer serve`` runs."""
    command = [sys.executable, "-m", "panel", "serve", str(APP), "--port", str(args.port),
               "--address", args.address]
    if args.show:
        command.append("--show")
    command += server_options(args)
    env = {**os.environ, DATA_DIR_VARIABLE: str(Path(args.data_dir).expanduser().resolve()) if args.data_dir
           else os.environ.get(DATA_DIR_VARIABLE, ""), "ENTROPY_EXPLORER_WARM": "" if args.no_warm else "all"}
    return command, env


def server_options(args) -> list[str]:
    """Threads, processes and the start-up script (quiet logs, warm caches: explorer.views.server)."""
    options = ["--setup", str(SETUP), "--num-procs", str(args.num_procs)]
    if args.num_threads is not None:
        options += ["--num-threads", str(args.num_threads)]
    return options


def _serve(args) -> int:
    if not APP.exists():
        print(f"error: the app file {APP} is missing (run from a source checkout)", file=sys.stderr)
        return 2
    if args.num_procs < 1 or (args.num_threads is not None and args.num_threads < 0):
        print("error: --num-procs must be at least 1 and --num-threads at least 0", file=sys.stderr)
        return 2
    command, env = serve_command(args)
    sys.stdout.flush()
    os.execve(command[0], command, env)   # the server takes this process over: signals reach it directly


def _prepare(args) -> int:
    from explorer.models.embedder import default_embedder_path
    from explorer.models.language_model import prepare_default_model

    print(f"default language model: {prepare_default_model()}")
    print(f"default sentence embedder: {default_embedder_path()}")
    return 0


def _score(args) -> int:
    import pandas as pd

    from explorer.models.language_model import load_language_model

    text = args.text if args.text != "-" else sys.stdin.read()
    model = load_language_model(args.model, device=args.device)
    trace = model.score(text, prompt=args.prompt).at_temperature(args.temperature)
    frame = trace.to_frame(decode=lambda i: model.tokenizer.decode([i]))
    columns = ["position", "token", "entropy", "surprisal", "varentropy", "rank"]
    with pd.option_context("display.max_rows", None, "display.width", 120, "display.float_format", "{:.3f}".format):
        print(frame[columns].to_string(index=False))
    summary = trace.summary()
    print(f"\n{summary['tokens']} tokens at T={args.temperature}: mean entropy {summary['mean_entropy']:.3f} nats, "
          f"log-perplexity {summary['log_perplexity']:.3f}, detection statistic D {summary['detection_statistic']:.3f}")
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


def _sweep(argv: list[str]) -> int:
    from explorer.cli_sweep import main as sweep_main

    return sweep_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="explorer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="launch the app with panel serve")
    serve.add_argument("--port", type=int, default=5006)
    serve.add_argument("--address", default="127.0.0.1")
    serve.add_argument("--show", action="store_true", help="open a browser tab")
    serve.add_argument("--data-dir", default=None, metavar="DIR",
                       help="the one folder where the served pages keep result stores and read question files; "
                            "a typed path outside it is refused (default: $ENTROPY_EXPLORER_DATA_DIR or "
                            "entropy-explorer in your user data folder)")
    serve.add_argument("--num-threads", type=int, default=None, metavar="N",
                       help="threads that handle browser events (Panel's --num-threads); long work always runs in "
                            "its own job threads (default: the event loop handles events)")
    serve.add_argument("--num-procs", type=int, default=1, metavar="N",
                       help="server processes sharing the port; each loads its own models and caches "
                            "(about 1.2 GB each once every page was opened)")
    serve.add_argument("--no-warm", action="store_true",
                       help="do not precompute the default pages' results when the server starts")
    serve.set_defaults(run=_serve)
    prepare = commands.add_parser("prepare", help="convert the embedded default model once (cached)")
    prepare.set_defaults(run=_prepare)
    score = commands.add_parser("score", help="print per-token entropy, surprisal, varentropy and rank")
    score.add_argument("text", help="the text to score ('-' reads standard input)")
    score.add_argument("--prompt", default=None, help="context before the text (not scored)")
    score.add_argument("--model", default=None, help="Hugging Face id or local directory (default: SmolLM2-135M-Instruct)")
    score.add_argument("--temperature", type=float, default=1.0)
    score.add_argument("--device", default=None)
    score.add_argument("--csv", default=None, help="also write the full trace to this CSV file")
    score.set_defaults(run=_score)
    commands.add_parser("sweep", help="temperature-sensitivity run (see explorer sweep --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        return _sweep(argv[1:])
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
