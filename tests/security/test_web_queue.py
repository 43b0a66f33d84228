"""Fair shares of the device queue: one client address cannot take every slot, another still gets one, and
a full device queue never refuses gallery browsing. One server: 4 waiting jobs at most, 2 per address."""

from __future__ import annotations

import json
import time

import pytest

from tests.security.web_server import dependency, endpoint_index, event_values, fetch, page_event

QUEUE_SIZE, PER_CLIENT = 4, 2
FIRST, SECOND, THIRD = "127.0.0.5", "127.0.0.6", "127.0.0.7"


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory):
    from atelier.ui_bench import stop
    from tests.webui.conftest import start_server

    running = start_server(tmp_path_factory.mktemp("security-queue") / "home", "--queue-size", str(QUEUE_SIZE))
    yield running
    stop(running.process)  # the long jobs end with the server


def long_draft(server) -> list:
    """/draft values for a job far longer than the test (500 steps at 256 px)."""
    return event_values(
        server, "draft", Prompt="a long job", Drafts=1, Draft_steps=500, Width=256, Height=256, Random_seed=False
    )


def submit(server, source: str, data: list, **headers):
    return fetch(
        server, "/gradio_api/call/draft", method="POST", json_body={"data": data}, source=source, headers=headers
    )


def waiting(server) -> int:
    return fetch(server, "/gradio_api/queue/status").json()["queue_size"]


def test_one_address_cannot_take_every_slot(queue_server):
    data = long_draft(queue_server)
    assert submit(queue_server, FIRST, data).status_code == 200  # runs (holds the device)
    deadline = time.monotonic() + 30
    while waiting(queue_server) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    assert waiting(queue_server) == 0
    assert [submit(queue_server, FIRST, data).status_code for _ in range(PER_CLIENT)] == [200] * PER_CLIENT
    assert waiting(queue_server) == PER_CLIENT

    refused = submit(queue_server, FIRST, data)
    assert refused.status_code == 503 and "for your address" in refused.text, refused.text
    join = json.dumps({"data": data, "fn_index": endpoint_index(queue_server, "draft"), "session_hash": "first-page"})
    from_page = fetch(
        queue_server,
        "/gradio_api/queue/join",
        method="POST",
        content=join.encode(),
        source=FIRST,
        headers={"Content-Type": "application/json", "Sec-Fetch-Mode": "cors"},
    )
    assert from_page.status_code == 429  # the page shows the words
    assert f"at most {PER_CLIENT} per client" in from_page.json()["detail"]

    assert [submit(queue_server, SECOND, data).status_code for _ in range(PER_CLIENT)] == [200] * PER_CLIENT
    assert waiting(queue_server) == QUEUE_SIZE
    full = submit(queue_server, THIRD, data)
    assert full.status_code == 503 and "Queue is full" in full.text

    # The device queue is full: browsing the gallery (quick events of their own) still runs at once.
    older = dependency(queue_server, "older_page")
    started = time.monotonic()
    messages = page_event(queue_server, "older_page", [None] * len(older["inputs"]))
    assert messages[-1]["msg"] == "process_completed" and messages[-1]["success"], messages[-1]
    assert time.monotonic() - started < 15  # not behind the device jobs (each runs for minutes)
    assert waiting(queue_server) == QUEUE_SIZE  # they are all still there
    assert fetch(queue_server, "/config", source=THIRD).status_code == 200
