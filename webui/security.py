"""Safety defaults of the server: loopback unless authenticated, our own host names only, own files only.

Every request (HTTP, SSE, websocket) passes `RequestGuard` before Gradio sees it. The guard checks the
`Host` header against an allowlist (the loopback names on the served port, plus `--allowed-hosts`),
so a DNS-rebinding page — whose requests carry the attacker's host name in both `Host` and `Origin` —
is refused; an `Origin`, when sent, must name an allowed host too (it is not compared with `Host`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from gradio.routes import App, ORJSONResponse

LOOPBACK_NAMES = {"localhost"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_UPLOAD = "50mb"
# A Host value: a DNS name or IPv4 address, or an IPv6 address in brackets; then an optional port.
_HOST = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})))(?::(?P<port>[0-9]{1,5}))?"
)
_ORIGIN = re.compile(r"(?P<scheme>https?)://(?P<host>[^/?#@\s]+)")


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


def no_downloads_from_here() -> None:
    """From now on this process never contacts the Hugging Face hub: after start-up, nothing a web request
    names is downloaded (models are fetched with the command line). Both the variable our model loading
    reads and the flag huggingface_hub itself checks are set."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub

    huggingface_hub.constants.HF_HUB_OFFLINE = True


def limit_decoded_pixels() -> None:
    """Gradio decodes an uploaded image (to convert its mode and format) before any handler of ours sees it:
    make Pillow refuse, from the header alone, any image over the Recipe's pixel limit (Pillow raises above
    twice MAX_IMAGE_PIXELS, so half the limit is set), instead of decoding a decompression bomb first."""
    from PIL import Image

    from pipelines.recipe import MAX_IMAGE_PIXELS

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS // 2


def split_host(value: str) -> tuple[str, int | None]:
    """("name", port or None) of a Host value such as `localhost:7860` or `[::1]:7860`; ValueError if malformed."""
    match = _HOST.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a host name with an optional port: {value[:80]!r}")
    name = (match["v6"] or match["name"]).lower().rstrip(".")
    if match["v6"]:
        ipaddress.IPv6Address(name)  # ValueError when it is not one
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port out of range in {value[:80]!r}")
    return name, port


def parse_allowed_hosts(text: str | None) -> tuple[str, ...]:
    """`--allowed-hosts a,b:8080`: names (any port) or name:port (that port only), each checked."""
    if not text:
        return ()
    entries = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            name, port = split_host(entry)
        except ValueError:
            raise ValueError(
                f"--allowed-hosts: {entry[:80]!r} is not a host name or address (e.g. studio.lan, 192.168.1.10:7860)"
            ) from None
        entries.append(_entry(name, port))
    return tuple(entries)


def listen_names(host: str) -> tuple[str, ...]:
    """The `--host` itself as an allowed name when it is one specific address or name (not a wildcard
    such as 0.0.0.0, nor loopback, which is allowed on the served port only)."""
    if host in ("0.0.0.0", "::", "") or is_loopback(host):
        return ()
    try:
        return (_entry(str(ipaddress.ip_address(host.strip("[]"))), None),)
    except ValueError:
        return parse_allowed_hosts(host)


def _entry(name: str, port: int | None) -> str:
    if port is None:
        return name
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


@dataclass(frozen=True)
class HostPolicy:
    """Which `Host` / `Origin` values this server answers: the loopback names on `port`, plus `extra`
    entries (a bare name allows any port, `name:port` that port only)."""

    port: int
    extra: tuple[str, ...] = ()

    def allows(self, name: str, port: int | None, scheme: str) -> bool:
        port = port if port is not None else (443 if scheme in ("https", "wss") else 80)
        if name in LOOPBACK_HOSTS and port == self.port:
            return True
        return name in self.extra or _entry(name, port) in self.extra

    def describe(self) -> str:
        names = ", ".join([f"localhost:{self.port}", f"127.0.0.1:{self.port}", f"[::1]:{self.port}", *self.extra])
        return f"this studio answers only to {names} (add a name with `atelier serve --allowed-hosts NAME`)"


class LoginThrottle:
    """Wrong passwords per client address: after `limit` failures within `window_s`, that address is
    refused (429, without checking the password) for `lock_s`; a right password clears its count."""

    def __init__(self, *, limit: int = 5, window_s: float = 600.0, lock_s: float = 60.0) -> None:
        self.limit, self.window_s, self.lock_s = limit, window_s, lock_s
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._mutex = threading.Lock()

    def wait_s(self, client: str) -> float:
        """Seconds this client must still wait before it may try a password (0 if it may now)."""
        with self._mutex:
            return max(0.0, self._locked_until.get(client, 0.0) - time.monotonic())

    def record(self, client: str, ok: bool) -> None:
        now = time.monotonic()
        with self._mutex:
            if ok:
                self._failures.pop(client, None)
                return
            recent = [t for t in self._failures.get(client, []) if now - t < self.window_s] + [now]
            self._failures[client] = recent
            if len(recent) >= self.limit:
                self._locked_until[client] = now + self.lock_s
                self._failures[client] = []


@dataclass(frozen=True)
class UploadQuota:
    """Room for uploads in Gradio's upload folder: past `max_bytes`, uploads older than `stale_s` are
    deleted, and if that is not enough the upload is refused (507) until jobs use or age out the rest."""

    folder: Path
    max_bytes: int = 2 << 30
    stale_s: float = 3600.0

    def has_room(self) -> bool:
        files = sorted(_file_stats(self.folder), key=lambda f: f[2])  # oldest first
        used = sum(size for _, size, _ in files)
        now = time.time()
        for path, size, modified in files:
            if used < self.max_bytes or now - modified < self.stale_s:
                break
            try:
                path.unlink(missing_ok=True)
            except OSError:  # not ours to delete after all: it keeps counting
                continue
            used -= size
        return used < self.max_bytes


def _file_stats(folder: Path) -> list[tuple[Path, int, float]]:
    """(path, size, mtime) of the plain files under `folder`; files that vanish meanwhile are skipped."""
    found = []
    for path in folder.rglob("*") if folder.is_dir() else ():
        try:
            info = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append((path, info.st_size, info.st_mtime))
    return found


@dataclass
class GuardSettings:
    policy: HostPolicy
    logins: LoginThrottle = field(default_factory=LoginThrottle)
    uploads: UploadQuota | None = None


class RequestGuard:
    """ASGI wrapper around the whole app (outside Gradio's CORS and error handling): refuses what is
    not ours before any route runs.

    - `Host` must be allowed (HostPolicy): 403 otherwise, with or without an `Origin`;
    - `Origin`, when present, must name an allowed host too (so no CORS grant, preflight or not, ever
      goes to a foreign page; `null` is refused); `Sec-Fetch-Site: cross-site` is refused;
    - a malformed or repeated `Host` / `Origin` is answered 400, never a traceback;
    - logins are throttled per client address (LoginThrottle).
    """

    def __init__(self, app, settings: GuardSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            refusal = self._refusal(scope)
        except Exception:  # a header we cannot even read: refused, not a crash
            refusal = (400, "malformed request headers")
        path = scope.get("path", "").rstrip("/")
        uploading = refusal is None and scope["type"] == "http" and path.endswith("/upload")
        if uploading and self.settings.uploads and not await asyncio.to_thread(self.settings.uploads.has_room):
            refusal = (507, "The upload space is full; try again later, when older uploads are cleared.")
        if refusal is not None:
            await _refuse(scope, send, *refusal)
        elif scope["type"] == "http" and scope.get("method") == "POST" and path.endswith("/login"):
            await self._login(scope, receive, _no_sniffing(send))
        else:
            await self.app(scope, receive, _no_sniffing(send) if scope["type"] == "http" else send)

    def _refusal(self, scope) -> tuple[int, str] | None:
        hosts, origins, cross_site = [], [], False
        for key, value in scope.get("headers", []):
            key = key.lower()
            if key == b"host":
                hosts.append(value.decode("latin-1"))
            elif key == b"origin":
                origins.append(value.decode("latin-1"))
            elif key == b"sec-fetch-site":
                cross_site = cross_site or value.strip().lower() == b"cross-site"
        if len(hosts) != 1 or len(origins) > 1:
            return 400, "a request needs exactly one Host header and at most one Origin header"
        scheme = scope.get("scheme", "http")
        try:
            name, port = split_host(hosts[0])
        except ValueError:
            return 400, "malformed Host header"
        policy = self.settings.policy
        if not policy.allows(name, port, scheme):
            return 403, f"host refused: {policy.describe()}"
        if origins:
            origin = origins[0].strip()
            if origin == "null":
                return 403, "cross-origin requests are refused (Origin: null)"
            match = _ORIGIN.fullmatch(origin.rstrip("/"))
            if match is None:
                return 400, "malformed Origin header"
            try:
                origin_name, origin_port = split_host(unquote(match["host"]))
            except ValueError:
                return 400, "malformed Origin header"
            if not policy.allows(origin_name, origin_port, match["scheme"]):
                return 403, f"cross-origin requests are refused: {policy.describe()}"
        if cross_site:
            return 403, "cross-origin requests are refused (Sec-Fetch-Site: cross-site)"
        return None

    async def _login(self, scope, receive, send) -> None:
        throttle = self.settings.logins
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = throttle.wait_s(client)
        if wait > 0:
            await _refuse(
                scope,
                send,
                429,
                f"Too many wrong logins from your address: try again in {max(1, round(wait))} s.",
                extra=[(b"retry-after", str(max(1, round(wait))).encode())],
            )
            return

        async def observe(message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status < 300 or status >= 400:  # 3xx: no login configured (Gradio redirects)
                    throttle.record(client, ok=status < 300)
            await send(message)

        await self.app(scope, receive, observe)


def _no_sniffing(send):
    """Every answer says `X-Content-Type-Options: nosniff`: an upload served as image/png (or as a download)
    is never guessed into HTML by a browser."""

    async def with_header(message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                headers.append((b"x-content-type-options", b"nosniff"))
            message = {**message, "headers": headers}
        await send(message)

    return with_header


async def _refuse(scope, send, status: int, message: str, extra: list | None = None) -> None:
    if scope["type"] == "websocket":  # closed before it is accepted: the client sees an HTTP 403
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    body = message.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardedApp(App):
    """Gradio's app with RequestGuard outermost: Gradio adds its CORS middleware outside any middleware
    we could pass it, and that one answers preflights on its own."""

    guard_settings: GuardSettings

    def build_middleware_stack(self):
        return RequestGuard(super().build_middleware_stack(), self.guard_settings)


def guarded_app(settings: GuardSettings, *, middleware: list) -> GuardedApp:
    """The app to hand to `Blocks.launch(_app=…)`; `middleware` runs inside Gradio's own."""
    app = GuardedApp(auth_dependency=None, default_response_class=ORJSONResponse, middleware=middleware)
    app.guard_settings = settings
    return app


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
            body = json.dumps({"detail": self._words(body)}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)

    def _words(self, body: bytes) -> str:
        """Gradio's own "Queue is full. Max size is …" becomes our sentence; the fair queue's own
        refusals (per client, quick requests) are already in words and kept."""
        try:
            detail = json.loads(body).get("detail")
        except (ValueError, AttributeError):
            detail = None
        if isinstance(detail, str) and not detail.startswith("Queue is full. Max size"):
            return detail
        return self.message
