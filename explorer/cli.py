"""The ``explorer`` command: serve the app, write a report, prepare models, score a text, run a
temperature sweep, list or delete shared views."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from explorer.data.paths import DATA_DIR_VARIABLE
from explorer.errors import InputError

APP = Path(__file__).resolve().parents[1] / "apps" / "entropy_explorer.py"
SETUP = APP.with_name("server_setup.py")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Tornado's request-header limit for the app (its default is 64 KiB): a link with an oversized value
#: still reaches the page, which opens with that setting's default and says so.
MAX_REQUEST_HEADER_BYTES = 1 << 20
#: ``explorer serve`` options passed through to ``panel serve`` as they are: (flag, kind, help).
PANEL_OPTIONS = (
    ("--basic-auth", "value", "a password for every user, or a JSON file of {user: password}: a login page guards "
                              "the app"),
    ("--cookie-secret", "value", "the secret that signs login cookies (default with a login: a random one per start)"),
    ("--oauth-provider", "value", "an OAuth provider (github, google, azure, okta, auth0, generic, ...)"),
    ("--oauth-key", "value", "the OAuth client id"),
    ("--oauth-secret", "value", "the OAuth client secret"),
    ("--oauth-redirect-uri", "value", "the OAuth redirect URI (behind a proxy: the public URL)"),
    ("--oauth-extra-params", "value", "extra OAuth parameters (a Python dict literal)"),
    ("--oauth-jwt-user", "value", "the JWT claim holding the user name"),
    ("--oauth-encryption-key", "value", "the key that encrypts OAuth tokens in cookies"),
    ("--oauth-expiry-days", "value", "days before an OAuth login expires"),
    ("--oauth-optional", "switch", "let users in without logging in (the login is offered, not required)"),
    ("--login-endpoint", "value", "the login page's path"),
    ("--logout-endpoint", "value", "the logout page's path"),
    ("--allow-websocket-origin", "repeat", "HOST[:PORT] that browsers use to reach the app (repeatable); needed "
                                           "for any address other than localhost"),
    ("--num-threads", "value", "threads that handle browser events, so one session's callback does not hold up "
                               "others; long work always runs in its own job threads (default: the event loop)"),
    ("--admin", "switch", "add Panel's admin page (/admin: sessions, memory, logs)"),
    ("--prefix", "value", "URL prefix when a reverse proxy serves the app under a path"),
    ("--use-xheaders", "switch", "trust X-Forwarded-* headers from a reverse proxy"),
    ("--ssl-certfile", "value", "TLS certificate (serve https without a proxy)"),
    ("--ssl-keyfile", "value", "TLS private key"),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def serve_arguments(args) -> list[str]:
    """The ``panel serve`` arguments for ``explorer serve``'s options (the app file first)."""
    argv = [str(APP), "--port", str(args.port), "--address", args.address]
    for flag, kind, _help in PANEL_OPTIONS:
        value = getattr(args, _dest(flag))
        if kind == "switch" and value:
            argv.append(flag)
        elif kind == "repeat":
            for item in value or []:
                argv += [flag, item]
        elif kind == "value" and value is not None:
            argv += [flag, str(value)]
    if args.show:
        argv.append("--show")
    return argv


def has_login(args) -> bool:
    """True when the server asks for a login (options or Panel's environment variables)."""
    return bool(args.basic_auth or args.oauth_provider or os.environ.get("PANEL_BASIC_AUTH")
                or os.environ.get("PANEL_OAUTH_PROVIDER"))


def exposure_warning(args) -> str | None:
    """The warning for a server reachable from other machines without a login, else None."""
    if args.address in LOOPBACK or has_login(args):
        return None
    return (f"WARNING: serving on {args.address} without a login: anyone who can reach port {args.port} of this "
            "machine sees every page, every upload, every shared view and every stored run. Add --basic-auth "
            "PASSWORD_OR_CREDENTIALS_FILE or --oauth-provider ... (see docs/sharing.md), or serve on 127.0.0.1 "
            "behind a reverse proxy that asks for one.")


def run_panel_serve(argv: list[str]) -> int:
    """``panel serve argv`` in this process, with a larger request-header limit (long links)."""
    from panel.command.serve import Serve

    class ExplorerServe(Serve):
        def customize_kwargs(self, args, server_kwargs):
            kwargs = super().customize_kwargs(args, server_kwargs)
            kwargs.setdefault("http_server_kwargs", {})["max_header_size"] = MAX_REQUEST_HEADER_BYTES
            return kwargs

    parser = argparse.ArgumentParser(prog="explorer serve")
    command = ExplorerServe(parser=parser)
    result = command.invoke(parser.parse_args(argv))
    return 1 if result is False else 0

def serve_command(args) -> tuple[list[str], dict[str, str]]:
    """The ``panel serve`` arguments and the environment variables that ``explorer serve`` runs with:
    the options above, processes, and the start-up script (quiet logs, warm caches: explorer.views.server)."""
    argv = serve_arguments(args) + ["--setup", str(SETUP), "--num-procs", str(args.num_procs)]
    env = {DATA_DIR_VARIABLE: str(Path(args.data_dir).expanduser().resolve()) if args.data_dir
           else os.environ.get(DATA_DIR_VARIABLE, ""), "ENTROPY_EXPLORER_WARM": "" if args.no_warm else "all"}
    return argv, env


def _counts_ok(args) -> bool:
    try:
        threads = None if args.num_threads is None else int(args.num_threads)
    except ValueError:
        threads = -1
    return args.num_procs >= 1 and (threads is None or threads >= 0)


def _serve(args) -> int:
    if not APP.exists():
        print(f"error: the app file {APP} is missing (run from a source checkout)", file=sys.stderr)
        return 2
    if not _counts_ok(args):
        print("error: --num-procs must be at least 1 and --num-threads at least 0", file=sys.stderr)
        return 2
    warning = exposure_warning(args)
    if warning:
        print(warning, file=sys.stderr)
    if has_login(args) and not args.cookie_secret and not os.environ.get("PANEL_COOKIE_SECRET"):
        args.cookie_secret = secrets.token_urlsafe(32)
        print("note: no --cookie-secret given: logins last until this server stops.", file=sys.stderr)
    if args.address not in LOOPBACK and not args.allow_websocket_origin:
        print(f"note: browsers must reach the app as localhost:{args.port} unless you add "
              "--allow-websocket-origin HOST:PORT for the name they use.", file=sys.stderr)
    argv, env = serve_command(args)
    os.environ.update(env)   # the app and its processes read these (explorer.views.server)
    return run_panel_serve(argv)


# ------------------------------------------------------------------------------ explorer report
REPORT_PAGES = ("lens", "diversity", "conformal", "training")
NONE = "none"
#: the lens's deeper results, each added to its report when one of these settings is given
LENS_DEEPER = {"lens_scored": ("lens_measure", "lens_position"),
               "branches": ("branch_position", "branches_k", "branch_tokens"), "comparison": ("second_model",),
               "reasoning": ("question", "chain", "answer", "split_by")}


def _analysis_fields(page: str):
    """The page's link settings that belong to its analysis: one flag each, parsed like a link."""
    from explorer.views.links import PAGE_FIELDS

    return [field for field in PAGE_FIELDS[page] if field.path.startswith("analysis.")]


def _analysis_class(page: str):
    if page == "lens":
        from explorer.analyses.token_lens import TokenLensAnalysis
        return TokenLensAnalysis
    if page == "diversity":
        from explorer.analyses.diversity import DiversityAnalysis
        return DiversityAnalysis
    if page == "training":
        from explorer.analyses.training import TrainingAnalysis
        return TrainingAnalysis
    from explorer.analyses.conformal import ConformalAnalysis
    return ConformalAnalysis


def add_report_parser(commands) -> argparse.ArgumentParser:
    report = commands.add_parser("report", help="write a self-contained HTML report of a page (opens offline)",
                                 description="Write one HTML file with a page's plots (interactive), cards, tables, "
                                             "settings, provenance and versions. Settings take the same values as "
                                             "the page's links.")
    pages = report.add_subparsers(dest="page", required=True)
    for page in REPORT_PAGES:
        sub = pages.add_parser(page, help=f"the {page} page")
        sub.add_argument("-o", "--output", required=True, help="the HTML file to write")
        cls = _analysis_class(page)
        for field in _analysis_fields(page):
            parameter = cls.param[field.path.split(".", 1)[1]]
            doc = (parameter.doc or parameter.label or field.key).strip().split("\n")[0].replace("%", "%%")
            sub.add_argument("--" + field.key.replace("_", "-"), dest=f"setting_{field.key}", metavar="VALUE",
                             help=f"{doc} (default: {parameter.default})")
    pages.choices["lens"].add_argument("--text-file", help="score the text of this file (UTF-8)")
    pages.choices["lens"].epilog = ("A setting of the lens, deeper (" + ", ".join(
        f"--{name.replace('_', '-')}" for names in LENS_DEEPER.values() for name in names) +
        ") adds that result: the logit lens, branches, a second model, reasoning steps.")
    from explorer.data import sources

    for page, registry in (("diversity", "EMBEDDING"), ("conformal", "CLASSIFIER")):
        sub = pages.choices[page]
        keys = [s.key for s in getattr(sources, f"{registry}_SOURCES") if s.kind != "upload"]
        sub.add_argument("--source", choices=keys, default=keys[0], help="bundled data (default: %(default)s)")
        sub.add_argument("--file", nargs="+" if page == "conformal" else None,
                         help="your own file(s) instead of --source (the page's upload formats)")
    pages.choices["diversity"].add_argument("--compare", help="a second bundled source (B), studied with A's settings")
    pages.choices["diversity"].add_argument("--compare-file", help="a second file (B) instead of --compare")
    pages.choices["conformal"].add_argument("--kind", choices=["auto", "probs", "logits"], default="auto",
                                            help="what the file's scores are")
    training = pages.choices["training"]
    for flag, registry, what in (("--source", sources.TRAINING_SOURCES, "representations across training"),
                                 ("--log-source", sources.LOG_SOURCES, "training log (the entropy law)")):
        keys = [s.key for s in registry if s.kind != "upload"]
        training.add_argument(flag, choices=[*keys, NONE], default=keys[0],
                              help=f"bundled {what}, or {NONE} (default: %(default)s)")
    training.add_argument("--data-size", action="store_true",
                          help="add uncertainty against data size (bundled ensembles, trained on first use)")
    run = pages.add_parser("run", help="a stored temperature-sensitivity run")
    run.add_argument("run_id")
    run.add_argument("--db", default=None, help="the results database (default: the app's)")
    run.add_argument("--measure", default=None, help="the measure shown per question (default: the first)")
    run.add_argument("-o", "--output", required=True, help="the HTML file to write")
    return report


def _settings_from(args, page: str, analysis) -> dict:
    """The flags given, parsed and checked exactly as a link's settings are."""
    from explorer.views.links import parse_value

    values = {}
    for field in _analysis_fields(page):
        raw = getattr(args, f"setting_{field.key}")
        if raw is None:
            continue
        name = field.path.split(".", 1)[1]
        try:
            values[name] = parse_value(analysis.param[name], raw, field.pattern)
        except ValueError as err:
            raise InputError(f"--{field.key.replace('_', '-')}: {err}") from err
    return values


def _report(args) -> int:
    from explorer.data.uploads import upload_from

    if args.page == "run":
        from explorer.analyses.runs import RunResults
        from explorer.data.store import default_db_path

        path = RunResults(args.db or default_db_path(), args.run_id).report(args.output, measure=args.measure)
        print(f"wrote {path}")
        return 0
    analysis = _analysis_class(args.page)()
    settings = _settings_from(args, args.page, analysis)
    analysis.param.update(**settings)
    options = {}
    if args.page == "lens":
        if args.text_file:
            analysis.text = Path(args.text_file).read_text(encoding="utf-8")
        if (args.text_file or args.setting_text is not None) and args.setting_mode is None:
            analysis.mode = "score"
        deeper = [name for name, names in LENS_DEEPER.items() if set(names) & set(settings)]
        if deeper:
            analysis.compute()
            for name in deeper:
                getattr(analysis, name)()
    elif args.page == "diversity":
        from explorer.analyses.diversity import DiversityAnalysis
        from explorer.data.sources import EMBEDDING_SOURCES
        from explorer.views.diversity import SHARED_SETTINGS

        def load(source, file):
            return EMBEDDING_SOURCES.load("upload", uploads=(upload_from(file),)) if file \
                else EMBEDDING_SOURCES.load(source)
        data = load(args.source, args.file)
        if isinstance(data, list):   # hidden states: every layer, the last one studied
            analysis.param.update(layers=data, layer=len(data) - 1)
        else:
            analysis.dataset = data
        if args.compare or args.compare_file:
            other = DiversityAnalysis(dataset=load(args.compare, args.compare_file),
                                      **{n: getattr(analysis, n) for n in SHARED_SETTINGS})
            options["other"] = other.compute()
    elif args.page == "training":
        _load_training(args, analysis, settings)
    else:
        from explorer.data.sources import CLASSIFIER_SOURCES

        analysis.outputs = CLASSIFIER_SOURCES.load("upload", uploads=[upload_from(f) for f in args.file], kind=args.kind) \
            if args.file else CLASSIFIER_SOURCES.load(args.source)
    path = analysis.report(args.output, **options)
    print(f"wrote {path}")
    return 0


def _load_training(args, analysis, settings: dict) -> None:
    """The bundled sources asked for, then the settings again (loading runs moves the epoch to their last one)."""
    from explorer.data.sources import DATA_SIZE_SOURCES, LOG_SOURCES, TRAINING_SOURCES

    if args.source == NONE and args.log_source == NONE and not args.data_size:
        raise InputError("Nothing to report: give --source, --log-source or --data-size.")
    analysis.param.update(runs={} if args.source == NONE else TRAINING_SOURCES.load(args.source),
                          logs=[] if args.log_source == NONE else LOG_SOURCES.load(args.log_source),
                          data_size=DATA_SIZE_SOURCES.load("digits") if args.data_size else None)
    analysis.param.update(**settings)
    if "epoch" in settings and analysis.runs and settings["epoch"] not in analysis.epochs():
        epochs = analysis.epochs()
        raise InputError(f"--epoch: no checkpoint at epoch {settings['epoch']} (the runs have epochs {epochs[0]} to "
                         f"{epochs[-1]}).")


def _share(args) -> int:
    from explorer.data.shares import ShareStore

    store = ShareStore()
    if args.action == "delete":
        for share_id in args.ids:
            store.delete(share_id)
            print(f"deleted share {share_id}")
        return 0
    listing = store.list()
    print(listing.to_string(index=False) if len(listing) else f"no shares in {store.root}")
    return 0


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
    serve = commands.add_parser("serve", help="launch the app (panel serve; login, origins, threads, admin)")
    serve.add_argument("--port", type=int, default=5006)
    serve.add_argument("--address", default="127.0.0.1", help="0.0.0.0 serves every network interface")
    serve.add_argument("--show", action="store_true", help="open a browser tab")
    serve.add_argument("--data-dir", default=None, metavar="DIR",
                       help="the one folder where the served pages keep result stores and read question files; "
                            "a typed path outside it is refused (default: $ENTROPY_EXPLORER_DATA_DIR or "
                            "entropy-explorer in your user data folder)")
    serve.add_argument("--num-procs", type=int, default=1, metavar="N",
                       help="server processes sharing the port; each loads its own models and caches "
                            "(about 1.2 GB each once every page was opened)")
    serve.add_argument("--no-warm", action="store_true",
                       help="do not precompute the default pages' results when the server starts")
    for flag, kind, help_text in PANEL_OPTIONS:
        if kind == "switch":
            serve.add_argument(flag, action="store_true", help=help_text)
        else:
            serve.add_argument(flag, action="append" if kind == "repeat" else "store", metavar="VALUE", help=help_text)
    serve.set_defaults(run=_serve)
    add_report_parser(commands).set_defaults(run=_report)
    share = commands.add_parser("share", help="list or delete the views shared from this machine's app")
    share.add_argument("action", choices=["list", "delete"])
    share.add_argument("ids", nargs="*", metavar="SHARE_ID")
    share.set_defaults(run=_share)
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
