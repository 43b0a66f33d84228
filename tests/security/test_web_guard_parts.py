"""The parts of the server's guard on their own (no server): host parsing and the allowlist, the login
throttle's lock, the upload quota, stale uploads removed at start and the fair queue's limits."""

from __future__ import annotations

import os
import time

import pytest

from webui import security
from webui.fair_queue import QueueLimits


@pytest.mark.parametrize(
    "value, parsed",
    [
        ("localhost:7860", ("localhost", 7860)),
        ("LOCALHOST.", ("localhost", None)),
        ("[::1]:80", ("::1", 80)),
        ("127.0.0.1", ("127.0.0.1", None)),
        ("studio.lan:8443", ("studio.lan", 8443)),
    ],
)
def test_host_values_are_parsed(value, parsed):
    assert security.split_host(value) == parsed


@pytest.mark.parametrize("value", ["", "a b", "[zz::1]", "host:99999", "host:", "user@host", "a/b", "::1", "é.example"])
def test_malformed_host_values_are_refused(value):
    with pytest.raises(ValueError):
        security.split_host(value)


def test_the_allowlist():
    policy = security.HostPolicy(port=7860, extra=security.parse_allowed_hosts("studio.lan, pi.local:8080"))
    assert policy.allows("localhost", 7860, "http") and policy.allows("::1", 7860, "http")
    assert not policy.allows("localhost", 7861, "http") and not policy.allows("127.0.0.1", None, "http")
    assert policy.allows("studio.lan", 443, "https") and policy.allows("pi.local", 8080, "http")
    assert not policy.allows("pi.local", 8081, "http") and not policy.allows("evil.example", 7860, "http")
    assert security.listen_names("0.0.0.0") == () and security.listen_names("127.0.0.1") == ()
    assert security.listen_names("192.168.1.10") == ("192.168.1.10",)
    with pytest.raises(ValueError, match="--allowed-hosts: 'a b'"):
        security.parse_allowed_hosts("ok,a b")


def test_the_login_throttle_locks_an_address_then_lets_it_try_again():
    throttle = security.LoginThrottle(limit=3, window_s=60, lock_s=0.3)
    for _ in range(2):
        throttle.record("10.0.0.1", ok=False)
    assert throttle.wait_s("10.0.0.1") == 0
    throttle.record("10.0.0.1", ok=False)
    assert 0 < throttle.wait_s("10.0.0.1") <= 0.3 and throttle.wait_s("10.0.0.2") == 0
    time.sleep(0.35)
    assert throttle.wait_s("10.0.0.1") == 0


def test_the_upload_quota_clears_stale_uploads_first(tmp_path):
    old, new = tmp_path / "old" / "a.png", tmp_path / "new" / "b.png"
    for path in (old, new):
        path.parent.mkdir()
        path.write_bytes(b"\0" * 600)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    quota = security.UploadQuota(folder=tmp_path, max_bytes=1000, stale_s=3600)
    assert quota.has_room() and not old.exists() and new.exists()  # the stale one made room
    (tmp_path / "new" / "c.png").write_bytes(b"\0" * 600)
    assert not quota.has_room()  # only fresh uploads: refused until they age out


def test_uploads_left_by_an_earlier_run_are_removed_at_start(tmp_path, monkeypatch):
    from webui.app import clear_stale_uploads, set_environment

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    monkeypatch.delenv("GRADIO_EXAMPLES_CACHE", raising=False)
    left = tmp_path / "ui-cache" / "uploads" / "abc" / "big.png"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"\0" * 1000)
    set_environment(tmp_path)
    assert os.environ["GRADIO_TEMP_DIR"] == str((tmp_path / "ui-cache" / "uploads").resolve())
    assert left.exists()  # not before the home is held
    clear_stale_uploads(tmp_path)
    assert not left.exists()

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "theirs"))  # a folder the user named: left alone
    mine = tmp_path / "theirs" / "keep.png"
    mine.parent.mkdir()
    mine.write_bytes(b"x")
    set_environment(tmp_path)
    clear_stale_uploads(tmp_path)
    assert mine.exists()


def test_queue_limits():
    assert QueueLimits.default_for(16) == QueueLimits(gpu_waiting=16, per_client=8)
    assert QueueLimits.default_for(1).per_client == 1
    with pytest.raises(ValueError, match="--queue-per-client: must be from 1 to the queue size 4"):
        QueueLimits.default_for(4, 5)


def test_gradio_refuses_a_decompression_bomb_upload_from_its_header(tmp_path, monkeypatch):
    """The Img2Img source box decodes uploads itself (mode and format conversion) before our handlers run:
    with the server's Pillow limit, a 64 MP palette PNG of a few kilobytes is refused without decoding."""
    import struct
    import zlib

    import gradio as gr
    from gradio.data_classes import FileData
    from PIL import Image

    from pipelines.recipe import MAX_IMAGE_PIXELS
    from webui.security import limit_decoded_pixels

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    limit_decoded_pixels()
    assert Image.MAX_IMAGE_PIXELS * 2 == MAX_IMAGE_PIXELS  # Pillow refuses above twice its setting

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * (8001 * 8000), 9)  # 8000×8000 palette pixels, all index 0
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 3, 0, 0, 0))
        + chunk(b"PLTE", b"\0\0\0")
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )
    assert bomb.stat().st_size < 200_000
    source = gr.Image(type="filepath", format="png", image_mode="RGB")
    with pytest.raises(Image.DecompressionBombError, match="64000000 pixels"):
        source.preprocess(FileData(path=str(bomb)))
