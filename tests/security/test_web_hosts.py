"""DNS rebinding and cross-origin requests against a running `atelier serve`: only our own host names get
answers, whatever Origin says; no CORS grant goes to another page; odd headers get a 400, not a crash."""

from __future__ import annotations

import json

import pytest

from tests.security.web_server import ALLOWED_NAME, fetch, port_of, raw_request, saved_png

EVIL = "evil.example"


def routes(server) -> list[tuple[str, str, bytes | None]]:
    """(method, path, body): the page, its config, the queue (join and the SSE stream), files, uploads, the API."""
    image_path, _ = saved_png(server)
    join = json.dumps({"data": [], "fn_index": 0, "session_hash": "rebind"}).encode()
    return [
        ("GET", "/", None),
        ("GET", "/config", None),
        ("POST", "/gradio_api/queue/join", join),
        ("GET", "/gradio_api/queue/data?session_hash=rebind", None),
        ("GET", f"/gradio_api/file={image_path}", None),
        ("POST", "/gradio_api/upload", b""),
        ("GET", "/gradio_api/info", None),
    ]


def grants(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-allow")}


@pytest.mark.parametrize("with_origin", [False, True], ids=["no-origin", "rebinding-origin"])
def test_a_foreign_host_is_refused_on_every_route(web_server, with_origin):
    port = port_of(web_server)
    headers = {"Host": f"{EVIL}:{port}", "Content-Type": "application/json"}
    if with_origin:  # a rebinding page: its Host and Origin both name the attacker's host
        headers["Origin"] = f"http://{EVIL}:{port}"
    for method, path, body in routes(web_server):
        response = fetch(web_server, path, method=method, headers=headers, content=body)
        assert response.status_code == 403, (path, response.status_code, response.text[:200])
        assert "host refused" in response.text and not grants(response), path
        assert "image/png" not in response.headers.get("content-type", "")


def test_the_loopback_names_and_allowed_hosts_are_answered(web_server):
    port = port_of(web_server)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"{ALLOWED_NAME}:{port}", ALLOWED_NAME):
        response = fetch(web_server, "/config", headers={"Host": host})
        assert response.status_code == 200, host
    origin = fetch(
        web_server, "/config", headers={"Host": f"{ALLOWED_NAME}:{port}", "Origin": f"http://{ALLOWED_NAME}:{port}"}
    )
    assert origin.status_code == 200
    for host in (f"localhost:{port + 1}", f"127.0.0.2:{port}", f"sub.{ALLOWED_NAME}:{port}", f"{EVIL}:{port}"):
        assert fetch(web_server, "/config", headers={"Host": host}).status_code == 403, host


def test_a_foreign_origin_is_refused_and_gets_no_cors_grant(web_server):
    port = port_of(web_server)
    join = json.dumps({"data": [], "fn_index": 0, "session_hash": "x"}).encode()
    for origin in (f"http://{EVIL}", f"http://{EVIL}:{port}", "null", f"http://127.0.0.1:{port + 1}"):
        response = fetch(
            web_server,
            "/gradio_api/queue/join",
            method="POST",
            content=join,
            headers={"Origin": origin, "Content-Type": "application/json"},
        )
        assert response.status_code == 403 and "cross-origin" in response.text, origin
        assert not grants(response), origin
        preflight = fetch(
            web_server,
            "/gradio_api/queue/join",
            method="OPTIONS",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 403 and not grants(preflight), (origin, dict(preflight.headers))
    cross_site = fetch(web_server, "/gradio_api/info", headers={"Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403
    own = fetch(web_server, "/gradio_api/info", headers={"Origin": web_server.url})
    assert own.status_code == 200  # the page itself may
    assert grants(own).get("access-control-allow-origin") in (None, web_server.url)


@pytest.mark.parametrize(
    "head, status",
    [
        ("GET /config HTTP/1.1\r\nHost: a b c", 400),
        ("GET /config HTTP/1.1\r\nHost: [zz::1]:80", 400),
        ("GET /config HTTP/1.1\r\nHost: localhost:99999", 400),
        ("GET /config HTTP/1.1\r\nHost: localhost:{port}\r\nHost: evil.example:{port}", 400),
        ("GET /config HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: http://[zz", 400),
        ("GET /config HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: javascript:alert(1)", 400),
        ("GET /config HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: http://\xe9vil.example", 400),
        ("GET /config HTTP/1.1\r\nHost: \xff\xfe:{port}", 400),
        ("GET /config HTTP/1.0", 400),  # no Host at all
    ],
)
def test_malformed_host_and_origin_get_a_clear_refusal(web_server, head, status):
    answer = raw_request(web_server, head.replace("{port}", str(port_of(web_server))))
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.split()[1] == str(status).encode(), answer[:300]
    assert b"Traceback" not in answer
    assert fetch(web_server, "/config").status_code == 200  # still answering
    assert "Traceback" not in web_server.log.read_text(errors="replace")


def test_a_websocket_from_a_foreign_host_is_refused(web_server):
    port = port_of(web_server)
    upgrade = (
        "GET /gradio_api/queue/data HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"
    )
    refused = raw_request(web_server, upgrade.format(host=f"{EVIL}:{port}"), close=False)
    assert refused.split(b"\r\n", 1)[0].split()[1] == b"403", refused[:200]
