"""Serving beyond this machine: refused without a login; with one, nothing answers before it, and
guessing passwords is throttled per client address."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.security.web_server import fetch, saved_png

USER, PASSWORD = "artist", "correct horse"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org"])
def test_other_hosts_need_a_login(tmp_path, host):
    result = subprocess.run(
        [sys.executable, "-m", "atelier.cli", "serve", "--home", str(tmp_path), "--host", host],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--auth USER:PASS" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "gallery.db").exists()  # refused before anything was opened


def test_bad_allowed_hosts_are_refused_in_words(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "atelier.cli", "serve", "--home", str(tmp_path), "--allowed-hosts", "ok.lan,not a name"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--allowed-hosts: 'not a name'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """`atelier serve --host 0.0.0.0 --auth …`: reachable from the network, so behind a login."""
    from atelier.ui_bench import stop
    from tests.webui.conftest import start_server

    running = start_server(
        tmp_path_factory.mktemp("security-auth") / "home", "--host", "0.0.0.0", "--auth", f"{USER}:{PASSWORD}"
    )
    yield running
    stop(running.process)


def login(server, password: str, source: str | None = None):
    return fetch(
        server,
        "/login",
        method="POST",
        content=f"username={USER}&password={password.replace(' ', '+')}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        source=source,
    )


def test_nothing_answers_before_the_login(open_server):
    image_path, _ = saved_png(open_server)
    for method, path in (
        ("GET", "/config"),
        ("GET", "/gradio_api/info"),
        ("POST", "/gradio_api/queue/join"),
        ("POST", "/gradio_api/call/draft"),
        ("POST", "/gradio_api/upload"),
        ("GET", f"/gradio_api/file={image_path}"),
    ):
        response = fetch(open_server, path, method=method, json_body={"data": []} if method == "POST" else None)
        assert response.status_code in (401, 403), (path, response.status_code, response.text[:200])
        assert b"\x89PNG" not in response.content


def test_password_guessing_is_throttled_per_address(open_server):
    guesser, other = "127.0.0.3", "127.0.0.4"
    started = time.monotonic()
    answers = [login(open_server, f"guess {i}", source=guesser).status_code for i in range(5)]
    assert answers == [400] * 5
    locked = login(open_server, PASSWORD, source=guesser)  # even the right password is not tried now
    assert locked.status_code == 429 and "Too many wrong logins" in locked.text
    assert 1 <= int(locked.headers["retry-after"]) <= 60
    assert [login(open_server, "guess", source=guesser).status_code for _ in range(20)] == [429] * 20
    assert time.monotonic() - started < 30  # refusals are immediate: the lock, not slowness, stops guessing

    welcome = login(open_server, PASSWORD, source=other)  # another address is not locked out
    assert welcome.status_code == 200, welcome.text
    cookies = welcome.cookies
    assert fetch(open_server, "/gradio_api/info", headers={"Cookie": _cookie_header(cookies)}).status_code == 200


def _cookie_header(cookies) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())
