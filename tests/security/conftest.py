"""Fixtures of the web half of the hostile suite: one `atelier serve` for the session (the demo model,
`--allowed-hosts studio.test`); modules needing other options start their own (web_server.start_server)."""

from __future__ import annotations

import pytest

from tests.security.web_server import ALLOWED_NAME


@pytest.fixture(scope="session")
def web_server(tmp_path_factory):
    from atelier.ui_bench import stop
    from tests.webui.conftest import start_server

    running = start_server(tmp_path_factory.mktemp("security-serve") / "home", "--allowed-hosts", ALLOWED_NAME)
    yield running
    ended = running.process.poll()
    stop(running.process)
    assert ended is None, f"the server ended during the tests (exit {ended}); its log: {running.log}"
