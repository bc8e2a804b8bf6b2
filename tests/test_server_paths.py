"""A served app keeps users' paths inside its data directory (symlinks, ``..``, ``~`` resolved);
notebooks and the CLI keep full paths; ``explorer serve`` passes the data directory, threads,
processes and warming to the server; a served run records who started it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer import cli
from explorer.analyses.temperature import TemperatureAnalysis
from explorer.data.paths import DATA_DIR_VARIABLE, data_dir, inside
from explorer.data.questions import DEFAULT_QUESTIONS
from explorer.errors import InputError
from explorer.views import server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "secret.csv").write_text("question\nleaked?\n")
    return folder


def test_relative_paths_are_taken_from_the_data_directory(root):
    assert inside("runs.duckdb", root) == root.resolve() / "runs.duckdb"
    assert inside("sub/../sub/q.csv", root) == root.resolve() / "sub" / "q.csv"
    assert inside(str(root / "sub" / "new.duckdb"), root) == root.resolve() / "sub" / "new.duckdb"


@pytest.mark.parametrize("typed", ["../secret.csv", "sub/../../secret.csv", "/etc/passwd", "~/runs.duckdb",
                                   "/", "..", "sub/../.."])
def test_paths_outside_are_refused(root, typed):
    with pytest.raises(InputError, match="outside this server's data directory"):
        inside(typed, root)


def test_a_symlink_out_of_the_data_directory_is_refused(root, tmp_path):
    (root / "link").symlink_to(tmp_path)
    (root / "file-link.csv").symlink_to(tmp_path / "secret.csv")
    with pytest.raises(InputError, match="outside"):
        inside("link/secret.csv", root)
    with pytest.raises(InputError, match="outside"):
        inside("file-link.csv", root)


def test_a_data_directory_reached_through_a_symlink_still_works(root, tmp_path):
    (tmp_path / "alias").symlink_to(root)
    assert inside("runs.duckdb", tmp_path / "alias") == root.resolve() / "runs.duckdb"


@pytest.mark.parametrize("typed", ["", "   ", "runs\x00.duckdb"])
def test_empty_or_nul_paths_are_refused(root, typed):
    with pytest.raises(InputError):
        inside(typed, root)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "sub", "x", "link", "~", "/", "//", "a b", "é"]), min_size=1, max_size=8))
def test_whatever_is_typed_lands_inside_or_is_refused(tmp_path_factory, parts):
    base = tmp_path_factory.getbasetemp() / "fuzz-root"
    (base / "sub").mkdir(parents=True, exist_ok=True)
    if not (base / "link").exists():
        (base / "link").symlink_to(base.parent)
    try:
        resolved = inside("/".join(parts), base)
    except InputError:
        return
    assert resolved == base.resolve() or base.resolve() in resolved.parents


def test_the_data_directory_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path / "team"))
    assert data_dir() == (tmp_path / "team").resolve() and data_dir().is_dir()


def test_notebooks_and_scripts_keep_full_paths(tmp_path):
    assert not server.is_served()
    assert server.checked_path("/etc/passwd") == "/etc/passwd"
    assert server.checked_path("../anything.duckdb") == "../anything.duckdb"


@pytest.fixture
def served(monkeypatch, tmp_path):
    """As inside a browser session of a server whose data directory is ``tmp_path / 'data'``."""
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path / "data"))
    monkeypatch.setattr(server, "is_served", lambda: True)
    return tmp_path / "data"


def test_served_question_files_may_also_be_bundled_or_hub_datasets(served):
    assert server.checked_path(str(DEFAULT_QUESTIONS), read_only=True) == str(DEFAULT_QUESTIONS)
    assert server.checked_path("hf:owner/name", read_only=True) == "hf:owner/name"
    assert server.checked_path("mine.csv", read_only=True) == str(served.resolve() / "mine.csv")
    with pytest.raises(InputError):
        server.checked_path(str(DEFAULT_QUESTIONS))             # the bundled folder is not writable
    with pytest.raises(InputError):
        server.checked_path("/etc/passwd", read_only=True)


def test_the_served_temperature_page_refuses_a_store_outside(served, tmp_path):
    from explorer.views.temperature import TemperatureSensitivity

    page = TemperatureSensitivity()
    page.jobs.wait()
    assert page.analysis.db_path == str(served.resolve() / "runs.duckdb")
    outside = tmp_path / "elsewhere" / "runs.duckdb"
    page.analysis.db_path = str(outside)      # typed in the "Results database" field
    page.jobs.wait()
    assert "outside this server's data directory" in page.jobs.message
    assert not outside.parent.exists()        # no folder, no database created
    page.analysis.db_path = "team/runs.duckdb"
    page.jobs.wait()
    assert (served / "team" / "runs.duckdb").exists()


def test_the_served_temperature_page_refuses_a_question_file_outside(served, tmp_path, monkeypatch):
    from explorer.views.temperature import TemperatureSensitivity

    page = TemperatureSensitivity()
    page.jobs.wait()
    page.analysis.questions_path = str(tmp_path / "secret.csv")
    page._on_start(None)
    assert "outside this server's data directory" in page.jobs.message and not page.jobs.busy("run")


def test_a_run_records_who_started_it():
    assert TemperatureAnalysis(run_by="alice").settings()["run_by"] == "alice"
    restored = TemperatureAnalysis.from_settings(TemperatureAnalysis(run_by="bob").settings(), "x.duckdb")
    assert restored.run_by == "bob"


def test_the_served_page_puts_the_logged_in_user_in_the_run_settings(served, monkeypatch):
    from explorer.views import temperature

    monkeypatch.setattr(temperature, "current_user", lambda: "alice")
    page = temperature.TemperatureSensitivity()
    page.jobs.wait()
    page.analysis.max_questions = 1
    started = []
    monkeypatch.setattr(page.jobs, "submit", lambda job, *args, **kwargs: started.append(page.analysis.settings()))
    page._on_start(None)
    assert started and started[0]["run_by"] == "alice"


# ------------------------------------------------------------------------------ explorer serve
def test_serve_passes_data_dir_threads_processes_and_warming(tmp_path):
    args = cli.build_parser().parse_args(["serve", "--data-dir", str(tmp_path / "d"), "--num-threads", "4",
                                          "--num-procs", "2", "--no-warm", "--port", "5111"])
    command, env = cli.serve_command(args)
    assert command[command.index("--num-threads") + 1] == "4" and command[command.index("--num-procs") + 1] == "2"
    assert Path(command[command.index("--setup") + 1]) == ROOT / "apps" / "server_setup.py"
    assert env[DATA_DIR_VARIABLE] == str((tmp_path / "d").resolve()) and env["ENTROPY_EXPLORER_WARM"] == ""
    default = cli.serve_command(cli.build_parser().parse_args(["serve"]))[0]
    assert "--num-threads" not in default and default[default.index("--num-procs") + 1] == "1"


@pytest.mark.parametrize("flags", [["--num-procs", "0"], ["--num-threads", "-1"]])
def test_serve_refuses_nonsense_counts(flags, capsys):
    assert cli.main(["serve", *flags]) == 2
    assert "must be at least" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_explorer_serve_starts_with_threads_and_a_data_directory(tmp_path):
    """The real command: a thread pool, the data directory, the start-up script, a page served."""
    port = _free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--port", str(port), "--no-warm",
                                    "--num-threads", "2", "--data-dir", str(tmp_path / "team")],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, body = time.time() + 120, ""
        while time.time() < deadline and process.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/entropy_explorer?page=conformal",
                                              timeout=10).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert "Entropy Explorer" in body, log.read_text()[-2000:]
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert "Traceback" not in log.read_text()
