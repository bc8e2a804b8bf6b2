"""Sharing on a network requires a login: ``explorer serve`` passes Panel's authentication through,
and warns when it would expose the app without one.

The served test starts ``explorer serve --basic-auth <credentials file>`` on a free loopback port and
talks HTTP to it: without credentials a page request gets the login page, a wrong password gets no
session, the right one gets the app."""

from __future__ import annotations

import http.cookiejar
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from explorer import cli

ROOT = Path(__file__).resolve().parents[1]


def _args(*argv):
    parser = cli.build_parser()
    return parser.parse_args(["serve", *argv])


def test_options_reach_panel_serve_as_given():
    argv = cli.serve_arguments(_args("--port", "5099", "--address", "0.0.0.0", "--basic-auth", "creds.json",
                                     "--cookie-secret", "s3", "--allow-websocket-origin", "lab.example:443",
                                     "--allow-websocket-origin", "10.0.0.5:5099", "--num-threads", "4", "--admin",
                                     "--oauth-provider", "github", "--oauth-key", "id", "--oauth-secret", "sec",
                                     "--prefix", "/explorer", "--use-xheaders"))
    assert argv[0] == str(cli.APP)
    pairs = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")
             and not argv[i + 1].startswith("--")}
    assert pairs["--port"] == "5099" and pairs["--address"] == "0.0.0.0" and pairs["--basic-auth"] == "creds.json"
    assert pairs["--cookie-secret"] == "s3" and pairs["--num-threads"] == "4" and pairs["--oauth-provider"] == "github"
    assert pairs["--oauth-key"] == "id" and pairs["--oauth-secret"] == "sec" and pairs["--prefix"] == "/explorer"
    assert argv.count("--allow-websocket-origin") == 2 and "10.0.0.5:5099" in argv
    assert "--admin" in argv and "--use-xheaders" in argv and "--show" not in argv
    # the same arguments parse in panel serve's own parser
    from panel.command.serve import Serve
    import argparse

    parser = argparse.ArgumentParser()
    Serve(parser=parser)
    parsed = parser.parse_args(argv)
    assert parsed.basic_auth == "creds.json" and parsed.num_threads == 4 and parsed.admin


def test_an_exposed_server_without_a_login_warns(monkeypatch, capsys):
    monkeypatch.delenv("PANEL_BASIC_AUTH", raising=False)
    monkeypatch.delenv("PANEL_OAUTH_PROVIDER", raising=False)
    monkeypatch.delenv("PANEL_COOKIE_SECRET", raising=False)
    started = []
    monkeypatch.setattr(cli, "run_panel_serve", lambda argv: started.append(argv) or 0)
    assert cli.main(["serve", "--address", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: serving on 0.0.0.0 without a login" in err and "--basic-auth" in err
    assert "--allow-websocket-origin" in err
    assert cli.main(["serve"]) == 0 and "WARNING" not in capsys.readouterr().err         # loopback: no warning
    assert cli.main(["serve", "--address", "0.0.0.0", "--basic-auth", "pw"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" not in err and "no --cookie-secret" in err
    secret = started[-1][started[-1].index("--cookie-secret") + 1]
    assert len(secret) >= 32                                           # a random secret signs the logins
    monkeypatch.setenv("PANEL_OAUTH_PROVIDER", "github")
    assert cli.exposure_warning(_args("--address", "0.0.0.0")) is None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """``explorer serve`` with a credentials file, on a free loopback port; yields its base URL."""
    root = tmp_path_factory.mktemp("auth")
    credentials = root / "credentials.json"
    credentials.write_text(json.dumps({"alice": "correct horse", "bob": "battery staple"}))
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_DATA_HOME": str(root), "PYTHONPATH": str(ROOT)}
    log = open(root / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--port", str(port),
                               "--basic-auth", str(credentials), "--cookie-secret", "test-secret-" + "x" * 32],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert server.poll() is None, (root / "server.log").read_text()
            try:
                urllib.request.urlopen(f"{base}/login", timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _client():
    jar = http.cookiejar.CookieJar()
    return jar, urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect)


def _request(opener, url, data=None):
    try:
        response = opener.open(url, data=urllib.parse.urlencode(data).encode() if data else None, timeout=120)
        return response.status, response.headers, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode("utf-8", "replace")


def test_without_credentials_a_page_request_gets_the_login_page(guarded):
    jar, opener = _client()
    page = f"{guarded}/entropy_explorer?page=conformal"
    status, headers, _ = _request(opener, page)
    assert status in (302, 303) and "/login" in headers["Location"]
    status, _, body = _request(opener, urllib.parse.urljoin(page, headers["Location"]))
    assert status == 200 and 'name="password"' in body and "Entropy Explorer" not in body
    assert not [c for c in jar if c.name == "user"]


def test_a_wrong_password_gets_no_access(guarded):
    for user, password in (("alice", "battery staple"), ("mallory", "correct horse"), ("alice", "")):
        jar, opener = _client()
        status, headers, _ = _request(opener, f"{guarded}/login", {"username": user, "password": password})
        assert status in (302, 303) and "error=" in headers["Location"]
        assert not [c for c in jar if c.name == "user"]
        status, headers, _ = _request(opener, f"{guarded}/entropy_explorer?page=conformal")
        assert status in (302, 303) and "/login" in headers["Location"]


def test_with_credentials_the_app_opens(guarded):
    jar, opener = _client()
    status, headers, _ = _request(opener, f"{guarded}/login", {"username": "bob", "password": "battery staple"})
    assert status in (302, 303) and "error=" not in headers["Location"]
    assert [c for c in jar if c.name == "user"]
    status, _, body = _request(opener, f"{guarded}/entropy_explorer?page=conformal")
    assert status == 200 and "Entropy Explorer · Conformal sets" in body
    status, headers, _ = _request(opener, f"{guarded}/logout")
    status, headers, _ = _request(opener, f"{guarded}/entropy_explorer?page=conformal")
    assert status in (302, 303) and "/login" in headers["Location"]          # logged out: the login again
