"""Every error a web client can cause comes back in words (a message, not `None`, no exception class, no
SQL, no object dumps), before any device work; absurd values and foreign model names are refused, and
the server keeps answering."""

from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

from tests.security.web_server import call, dependency, event_values, fetch, page_event, upload

LEAKS = ("Traceback", "Error:", "object at 0x", "SELECT", "[SQL", "NoneType", "sqlite3")


def words_of(answer: dict) -> str:
    """The text a client is shown: an error's message, or the status line (first output) of a job."""
    data = answer["data"]
    if answer["event"] == "error":
        return (data or {}).get("error") or ""
    return data[0] if data and isinstance(data[0], str) else ""


def assert_in_words(text: str) -> None:
    assert text and text != "None", text
    for leak in LEAKS:
        assert leak not in text, (leak, text)


def saved_count(server) -> int:
    gallery = server.gallery()
    try:
        return len(gallery.search(None, limit=200).items)
    finally:
        gallery.close()


def test_an_event_of_the_page_without_its_click_is_refused_in_words(web_server):
    pick = dependency(web_server, "pick")
    answer = fetch(
        web_server, "/gradio_api/run/predict", method="POST", json_body={"fn_index": pick["id"], "data": [[]]}
    )
    message = answer.json().get("error")
    assert_in_words(message)
    assert "click in the page" in message


def test_too_few_values_are_refused_in_words(web_server):
    answer = call(web_server, "draft", ["a prompt", "", "auto"])
    assert answer["event"] == "error"
    text = words_of(answer)
    assert_in_words(text)
    assert "enough input values" in text and "needed" in text


def test_a_refused_file_reference_says_why(web_server):
    components = {c["id"]: c for c in fetch(web_server, "/config").json()["components"]}
    inputs = dependency(web_server, "img2img")["inputs"]
    values = event_values(web_server, "img2img", Prompt="a file that is not ours")
    for i, component_id in enumerate(inputs):
        if components[component_id]["type"] == "image":
            values[i] = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
    answer = call(web_server, "img2img", values)
    text = words_of(answer)
    assert_in_words(text)
    assert "root:" not in json.dumps(answer)


@pytest.mark.parametrize(
    "changes, hint",  # hint: a word the message must hold (the field or its limit)
    [
        ({"Width": float("nan")}, "width"),
        ({"Width": float("inf")}, "width"),
        ({"Height": -float("inf")}, "height"),
        ({"Width": 1e9}, "width"),
        ({"Draft_steps": 1e9}, "draft steps: value 1000000000.0 is greater than maximum value 500"),
        ({"Drafts": 10**9}, "drafts: value 1000000000 is greater than maximum value 16"),
        ({"Guidance": float("nan")}, "guidance"),
        ({"Seed": 2**80}, "seed"),
        ({"Seed": "not a number"}, None),
        ({"Width": [64]}, None),
        ({"Sampler": "../../etc/passwd"}, "sampler: value: ../../etc/passwd is not in the list of choices"),
    ],
    ids=lambda value: json.dumps(value, default=str)[:40] if isinstance(value, dict) else str(value),
)
def test_absurd_values_are_refused_before_any_device_work(web_server, changes, hint):
    before = saved_count(web_server)
    values = event_values(web_server, "draft", **{"Prompt": "absurd", "Drafts": 1, "Random_seed": False, **changes})
    started = time.monotonic()
    answer = call(web_server, "draft", values)
    text = words_of(answer)
    assert_in_words(text)
    assert answer["event"] == "error" or text.startswith("⚠"), text  # refused, not drafted
    if hint:
        assert hint in text.lower(), text
    assert time.monotonic() - started < 20
    assert saved_count(web_server) == before  # nothing was made
    assert fetch(web_server, "/config").status_code == 200  # still answering


@pytest.mark.parametrize("picked", ["9223372036854775808", "99999999999999999999999", "-1", "1e9", "#0"])
def test_absurd_ids_are_refused_in_words(web_server, picked):
    values = event_values(web_server, "refine", Picked_draft_=picked)
    labels = [label for label in _labels(web_server, "refine")]
    values[labels.index("Picked draft #")] = picked
    text = words_of(call(web_server, "refine", values))
    assert_in_words(text)
    assert "Overflow" not in text and text.startswith("⚠"), text


def _labels(server, api_name):
    info = fetch(server, "/gradio_api/info").json()["named_endpoints"][f"/{api_name}"]
    return [p["label"] for p in info["parameters"]]


@pytest.mark.parametrize("query", ["*", '"', "a AND", "NEAR(", "prompt:*", "x" * 5000])
def test_search_syntax_never_shows_sql(web_server, query):
    filters = dependency(web_server, "first")
    components = {c["id"]: c for c in fetch(web_server, "/config").json()["components"]}
    values = []
    for component_id in filters["inputs"]:
        props = components[component_id].get("props", {})
        values.append(query if props.get("label") == "Search prompts" else props.get("value"))
    messages = page_event(web_server, "first", values)
    text = json.dumps(messages)
    for leak in LEAKS:
        assert leak not in text, (leak, text[:500])
    assert messages[-1].get("success") is not False or messages[-1].get("output", {}).get("error")


def control_image(server) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 0, 0)).save(buffer, format="PNG")
    path = upload(server, "control.png", buffer.getvalue(), "image/png").json()[0]
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def test_a_controlnet_outside_the_list_is_refused_without_saying_what_exists(web_server):
    components = {c["id"]: c for c in fetch(web_server, "/config").json()["components"]}
    inputs = dependency(web_server, "controlnet")["inputs"]
    image = control_image(web_server)
    answers = {}
    for name in ("/etc", "/no/such/folder", "../../gallery.db", "someone/any-repo", "ControlNet/../../x"):
        values = event_values(web_server, "controlnet", Prompt="guided")
        for i, component_id in enumerate(inputs):
            props = components[component_id].get("props", {})
            if components[component_id]["type"] == "image":
                values[i] = image
            elif props.get("label") == "ControlNet model":
                values[i] = name
        before = saved_count(web_server)
        text = words_of(call(web_server, "controlnet", values))
        assert_in_words(text)
        assert saved_count(web_server) == before
        answers[name] = text.replace(name, "NAME")
    assert len(set(answers.values())) == 1, answers  # an existing path answers as a missing one does
    assert "not in the list" in next(iter(answers.values())) or "from the list" in next(iter(answers.values()))
