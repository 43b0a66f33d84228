"""The server's safety defaults, checked over plain HTTP against a running `atelier serve`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest
from PIL import Image


def fetch(url: str, *, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, headers, body) without raising on 4xx/5xx."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


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


def test_only_the_gallery_files_are_served(server):
    image_path, image = saved_png(server)
    status, headers, body = fetch(f"{server.url}/gradio_api/file={image_path}")
    assert status == 200 and body == image and headers["content-type"] == "image/png"

    refused = [
        server.home / "gallery.db",
        server.home / "files" / ".." / "gallery.db",
        "../gallery.db",
        "/etc/passwd",
        server.home / "tiny" / "base" / "model_index.json",
        server.log,
    ]
    for target in refused:
        status, _, body = fetch(f"{server.url}/gradio_api/file={target}")
        assert status in (403, 404), (target, status)
        assert b"SQLite" not in body and b"root:" not in body


def test_requests_from_another_origin_are_refused(server):
    payload = json.dumps({"data": [], "fn_index": 0, "session_hash": "x"}).encode()
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
        status, _, body = fetch(
            f"{server.url}/gradio_api/queue/join",
            data=payload,
            method="POST",
            headers={"Origin": origin, "Content-Type": "application/json"},
        )
        assert status == 403 and b"cross-origin" in body, origin
    status, _, _ = fetch(f"{server.url}/gradio_api/info", headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, _, _ = fetch(f"{server.url}/gradio_api/info", headers={"Origin": server.url})
    assert status == 200  # the page itself may


def test_uploaded_html_and_svg_are_never_rendered(server):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    for filename, content, ctype in (
        ("x.svg", svg, "image/svg+xml"),
        ("x.html", b"<script>alert(1)</script>", "text/html"),
    ):
        body, content_type = multipart("files", filename, content, ctype)
        status, _, answer = fetch(
            f"{server.url}/gradio_api/upload", data=body, method="POST", headers={"Content-Type": content_type}
        )
        assert status == 200, answer
        uploaded = json.loads(answer)[0]
        status, headers, served = fetch(f"{server.url}/gradio_api/file={uploaded}")
        assert status == 200 and served == content
        assert headers["content-type"] == "application/octet-stream"
        assert headers["content-disposition"].startswith("attachment")


def test_uploads_are_size_limited(server):
    body, content_type = multipart("files", "big.png", b"\0" * (51 * 1024 * 1024), "image/png")
    status, _, _ = fetch(
        f"{server.url}/gradio_api/upload", data=body, method="POST", headers={"Content-Type": content_type}
    )
    assert status == 413


def test_monitoring_is_off(server):
    for path in ("/monitoring", "/monitoring/summary", "/monitoring/anykey"):
        status, _, body = fetch(server.url + path)
        assert status == 403 and b"Monitoring is not enabled" in body, path


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
