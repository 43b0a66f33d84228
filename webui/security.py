"""Safety defaults of the server: loopback unless authenticated, same-origin requests only, own files only."""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

LOOPBACK_NAMES = {"localhost"}
MAX_UPLOAD = "50mb"


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth: expected USER:PASS with a non-empty user and password")
    return user, password


def check_listen(host: str, auth: tuple[str, str] | None) -> None:
    """Listening beyond this machine needs a login: anyone on the network could otherwise use the GPU and gallery."""
    if not is_loopback(host) and auth is None:
        raise ValueError(
            f"--host {host} makes the studio reachable from other machines; add --auth USER:PASS "
            "(or keep the default --host 127.0.0.1)"
        )


def _host_port(value: str, scheme: str) -> tuple[str, int]:
    parts = urlsplit(f"{scheme}://{value}" if "://" not in value else value)
    default = 443 if parts.scheme in ("https", "wss") else 80
    return (parts.hostname or "").lower(), parts.port or default


class SameOriginOnly:
    """ASGI middleware: refuse (403) any request a page from another origin makes.

    Gradio's own CORS handling only withholds the response headers; the request still runs (a
    cross-site form POST could start a job). Browsers send `Origin` on cross-origin and on
    non-GET requests, and `Sec-Fetch-Site` on all of them; either one naming another site is refused.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if not self._allowed(headers, scope):
                await self._refuse(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _allowed(headers: dict[str, str], scope) -> bool:
        if headers.get("sec-fetch-site") == "cross-site":
            return False
        origin = headers.get("origin")
        if origin is None:
            return True
        if origin == "null":
            return False
        scheme = scope.get("scheme", "http")
        host = headers.get("host", "")
        return _host_port(origin, scheme) == _host_port(host, scheme)

    @staticmethod
    async def _refuse(scope, receive, send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b"cross-origin requests are refused"
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class QueueFullMessage:
    """ASGI middleware: a browser whose job finds the queue full is told so, in those words.

    Gradio answers a full queue with 503, which its page shows as "This application is currently
    busy"; it shows the `detail` of other error statuses. Browsers (they send Sec-Fetch-Mode) get
    429 with a message naming the limit; API clients keep the 503 that gradio_client turns into
    its own "Queue is full" error.
    """

    def __init__(self, app, max_size: int | None) -> None:
        self.app = app
        self.message = f"The queue is full ({max_size} waiting at most). Try again when a job has finished."

    async def __call__(self, scope, receive, send) -> None:
        from_browser = any(k.lower() == b"sec-fetch-mode" for k, _ in scope.get("headers", []))
        if scope["type"] != "http" or not scope.get("path", "").endswith("/queue/join") or not from_browser:
            await self.app(scope, receive, send)
            return
        held: list[dict] = []  # a 503's start and body, until the body says why

        async def rewrite(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                held.append(message)
                return
            if not held:
                await send(message)
                return
            held.append(message)
            if message.get("more_body"):
                return
            body = b"".join(m.get("body", b"") for m in held[1:])
            if b"Queue is full" not in body:  # e.g. "Queue is stopped": passed on as it was
                for m in held:
                    await send(m)
                return
            body = json.dumps({"detail": self.message}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)
