"""The shared GPU queue seen from outside: a bounded size that says when it is full, and each
browser's own place in the line. One server with room for two waiting jobs, both of which one address
may hold here (fair shares between addresses: tests/security/test_web_queue.py)."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from tests.webui.conftest import open_page, shot, start_long_draft, start_server, wait_text

pytestmark = pytest.mark.browser
QUEUE_SIZE = 2
LONG = dict(Width=256, Height=256)  # with 500 steps: far longer than any test waits


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory):
    from atelier.ui_bench import stop

    running = start_server(
        tmp_path_factory.mktemp("serve-queue") / "home",
        "--queue-size",
        str(QUEUE_SIZE),
        "--queue-per-client",
        str(QUEUE_SIZE),
    )
    yield running
    stop(running.process)


def client(server):
    from gradio_client import Client

    return Client(server.url + "/", verbose=False)


def submit_draft(server, prompt: str, steps: int, **controls):
    """A /draft job from a new API client (its own session); returns (client, job)."""
    from atelier.ui_bench import api_draft_args

    api = client(server)
    return api, api.submit(*api_draft_args(api, prompt, steps, **controls), api_name="/draft")


def interrupt(server, session_hash: str) -> None:
    """Interrupt that session's running job the way the page does: outside the queue (which is full)."""
    body = json.dumps({"data": [], "session_hash": session_hash}).encode()
    request = urllib.request.Request(
        f"{server.url}/gradio_api/run/interrupt", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def wait_status(job, *codes, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.status()
        if status.code.name in codes:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job status stayed {job.status().code.name}, wanted one of {codes}")


def test_a_full_queue_says_so(small_queue, chromium):
    from gradio_client.utils import QueueError

    runner, running = submit_draft(small_queue, "a long job that holds the device", 500, **LONG)
    wait_status(running, "ITERATING")
    waiting = [submit_draft(small_queue, f"a short job waiting {i}", 2)[1] for i in range(QUEUE_SIZE)]
    assert [wait_status(job, "IN_QUEUE").rank for job in waiting] == [0, 1]

    _, refused = submit_draft(small_queue, "one job too many", 2)
    with pytest.raises(QueueError, match="Queue is full"):
        refused.result(timeout=30)

    page = open_page(chromium, small_queue.url)
    try:
        page.fill("#prompt textarea", "one job too many, from the browser")
        page.click("#draft-button")
        toast = page.locator(".toast-body", has_text=f"The queue is full ({QUEUE_SIZE} waiting at most)")
        toast.wait_for(timeout=30_000)
        assert "currently busy" not in page.inner_text("body")
        shot(page, "15-queue-full")
    finally:
        page.context.close()

    interrupt(small_queue, runner.session_hash)
    assert "Interrupted" in running.result(timeout=60)[0]
    for job in waiting:  # the waiting jobs run once the device is free
        assert re.search(r"\d+ drafts? ready", job.result(timeout=60)[0])
    _, again = submit_draft(small_queue, "room again", 2)
    assert re.search(r"\d+ drafts? ready", again.result(timeout=60)[0])


def test_a_second_browser_sees_its_own_place(small_queue, chromium):
    first = open_page(chromium, small_queue.url)
    second = open_page(chromium, small_queue.url)
    try:
        start_long_draft(first, "the first browser's long job")

        _, ahead = submit_draft(small_queue, "an API job in line before the second browser", 2)
        assert wait_status(ahead, "IN_QUEUE").rank == 0
        second.fill("#prompt textarea", "the second browser's job")
        second.click("#draft-button")
        # The second page's status line: behind the running job and the API job (in words, not Gradio's timers).
        wait_text(second, "#draft-status", r"Waiting — 3rd in the queue", timeout=30_000)
        assert "Waiting" not in first.inner_text("#draft-status")  # the first page is running, not waiting
        assert not re.search(r"queue: \d+/\d+", second.inner_text("body"))
        shot(second, "16-second-browser-in-queue")

        first.click("#interrupt-button")
        wait_text(first, "#draft-status", r"Interrupted", timeout=30_000)
        assert re.search(r"\d+ drafts? ready", ahead.result(timeout=60)[0])
        wait_text(second, "#draft-status", r"drafts? ready", timeout=60_000)
    finally:
        first.context.close()
        second.context.close()
