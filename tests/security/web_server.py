"""Helpers for the web half of the hostile suite: a real `atelier serve` (tests/webui/conftest.py starts
it) spoken to over real HTTP with httpx, with any Host/Origin header and from any loopback address."""

from __future__ import annotations

import io
import json
import socket
import uuid
from urllib.parse import urlsplit

import httpx
from PIL import Image

ALLOWED_NAME = "studio.test"  # given to the fixture server with --allowed-hosts


def port_of(server) -> int:
    return urlsplit(server.url).port


def fetch(
    server,
    path: str,
    *,
    method: str = "GET",
    headers: dict | None = None,
    content: bytes | None = None,
    json_body=None,
    source: str | None = None,
    timeout: float = 30.0,
) -> httpx.Response:
    """One request to the server at 127.0.0.1; `headers` may replace Host; `source`: the client address
    (any 127.x.y.z: Linux routes the whole loopback network)."""
    transport = httpx.HTTPTransport(local_address=source) if source else None
    with httpx.Client(transport=transport, timeout=timeout) as client:
        return client.request(
            method, server.url + path, headers=headers or {}, content=content, json=json_body, follow_redirects=False
        )


def raw_request(server, head: str, *, close: bool = True) -> bytes:
    """A request sent byte for byte (headers httpx would refuse to send), with `Connection: close` unless
    `close` is False; the server's whole answer (until it closes the connection)."""
    text = head.rstrip("\r\n") + ("\r\nConnection: close" if close else "") + "\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as sock:
        sock.sendall(text.encode("latin-1"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def multipart(name: str, filename: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def upload(server, filename: str, content: bytes, content_type: str) -> httpx.Response:
    body, ctype = multipart("files", filename, content, content_type)
    return fetch(server, "/gradio_api/upload", method="POST", content=body, headers={"Content-Type": ctype})


def saved_png(server) -> tuple[str, bytes]:
    """A generation saved straight into the server's gallery; returns its image path and bytes."""
    from pipelines.recipe import ModelRef, Recipe

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    gallery = server.gallery()
    try:
        generation = gallery.save(
            Recipe(model=ModelRef("tiny"), prompt="safety check", seed=3, width=64, height=64),
            "txt2img",
            buffer.getvalue(),
        )
        return str(generation.image_path), generation.image_path.read_bytes()
    finally:
        gallery.close()


def dependency(server, api_name: str) -> dict:
    """An event of the page (private ones included) by the name Gradio gives it: its fn_index is "id"."""
    config = fetch(server, "/config").json()
    for found in config["dependencies"]:
        if found.get("api_name") == api_name:
            return found
    raise KeyError(api_name)


def endpoint_index(server, api_name: str) -> int:
    return dependency(server, api_name)["id"]


def call(server, api_name: str, data: list, *, timeout: float = 120.0) -> dict:
    """A named endpoint through Gradio's REST API (no browser session); the last SSE message as
    {"event": …, "data": …}."""
    body = json.dumps({"data": data}, allow_nan=True).encode()  # NaN and Infinity too, as JavaScript can send
    started = fetch(
        server,
        f"/gradio_api/call/{api_name}",
        method="POST",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    answer = fetch(server, f"/gradio_api/call/{api_name}/{event_id}", timeout=timeout).text
    event, payload = None, None
    for line in answer.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            payload = json.loads(line.split(":", 1)[1])
    return {"event": event, "data": payload}


def event_values(server, api_name: str, **by_label) -> list:
    """Every input value of a named event, in order, as the REST API wants them: the documented defaults
    with `by_label` changes (labels with spaces as underscores), and None for the page's hidden states."""
    wanted = {k.replace("_", " "): v for k, v in by_label.items()}
    documented = iter(api_defaults(server, api_name))
    components = {c["id"]: c for c in fetch(server, "/config").json()["components"]}
    values = []
    for component_id in dependency(server, api_name)["inputs"]:
        if components[component_id]["type"] == "state":
            values.append(None)
            continue
        label, default = next(documented)
        values.append(wanted.get(label, default))
    return values


def api_defaults(server, api_name: str) -> list[tuple[str, object]]:
    """The endpoint's parameters (label, default), in order, from /gradio_api/info."""
    info = fetch(server, "/gradio_api/info").json()["named_endpoints"][f"/{api_name}"]
    return [(p["label"], p.get("parameter_default")) for p in info["parameters"]]


def page_event(server, api_name: str, data: list, *, timeout: float = 120.0) -> list[dict]:
    """An event sent the way the page sends it (queue join, then the session's SSE stream); every message
    of that event until it completes: toasts ("log"), progress and the final "process_completed"."""
    session = uuid.uuid4().hex
    body = {"data": data, "fn_index": endpoint_index(server, api_name), "session_hash": session}
    joined = fetch(server, "/gradio_api/queue/join", method="POST", json_body=body)
    assert joined.status_code == 200, joined.text
    messages = []
    with httpx.Client(timeout=timeout) as client:
        with client.stream("GET", f"{server.url}/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                messages.append(message)
                if message.get("msg") in ("process_completed", "close_stream"):
                    break
    return messages
