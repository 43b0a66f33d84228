"""File routes of a running `atelier serve`: only the gallery's own files are served (no traversal, encoded
or absolute, nor through a symlink planted in the gallery folder); uploads are never rendered as a page."""

from __future__ import annotations

import os

from tests.security.web_server import fetch, saved_png, upload

FILE_ROUTES = ("/gradio_api/file={}", "/gradio_api/file/{}", "/file={}")


def test_the_gallery_files_are_served(web_server):
    image_path, image = saved_png(web_server)
    response = fetch(web_server, f"/gradio_api/file={image_path}")
    assert response.status_code == 200 and response.content == image
    assert response.headers["content-type"] == "image/png"


def test_nothing_else_is_served_whatever_the_spelling(web_server):
    home = web_server.home
    files = home / "files"
    secret = str(home / "gallery.db")
    targets = [
        secret,
        f"{files}/../gallery.db",
        f"{files}/%2e%2e/gallery.db",
        f"{files}%2F..%2Fgallery.db",
        f"{files}/..%2fgallery.db",
        f"{files}/%252e%252e/gallery.db",
        "../gallery.db",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "//etc/passwd",
        "file:///etc/passwd",
        str(home / "models" / "tiny" / "base" / "model_index.json"),
        str(web_server.log),
    ]
    for route in FILE_ROUTES:
        for target in targets:
            response = fetch(web_server, route.format(target))
            assert response.status_code in (400, 403, 404, 405), (route, target, response.status_code)
            assert b"SQLite" not in response.content and b"root:" not in response.content, (route, target)


def test_a_symlink_in_the_gallery_folder_is_not_followed_out(web_server):
    files = web_server.home / "files"
    files.mkdir(parents=True, exist_ok=True)
    for name, target in (("link-db", web_server.home / "gallery.db"), ("link-passwd", "/etc/passwd")):
        link = files / name
        if not link.is_symlink():
            os.symlink(target, link)
        folder_link = files / f"{name}-dir"
        if not folder_link.is_symlink():
            os.symlink(os.path.dirname(target), folder_link)
        for path in (link, folder_link / os.path.basename(target)):
            for route in FILE_ROUTES:
                response = fetch(web_server, route.format(path))
                assert response.status_code in (403, 404, 405), (route, path, response.status_code)
                assert b"SQLite" not in response.content and b"root:" not in response.content


def test_uploaded_html_and_svg_are_never_rendered(web_server):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    for filename, content, ctype in (
        ("x.svg", svg, "image/svg+xml"),
        ("x.html", b"<script>alert(1)</script>", "text/html"),
        ("x.png", b"<html><script>alert(1)</script></html>", "image/png"),  # not an image, named .png
    ):
        answer = upload(web_server, filename, content, ctype)
        assert answer.status_code == 200, answer.text
        uploaded = answer.json()[0]
        response = fetch(web_server, f"/gradio_api/file={uploaded}")
        assert response.status_code == 200 and response.content == content
        served_as = response.headers["content-type"]
        assert "html" not in served_as and "svg" not in served_as and "xml" not in served_as, served_as
        assert response.headers["x-content-type-options"] == "nosniff"  # never guessed into a page
        if served_as != "image/png":  # anything that is not shown as an image is a download
            assert response.headers["content-disposition"].startswith("attachment")


def test_uploads_are_size_limited(web_server):
    answer = upload(web_server, "big.png", b"\0" * (51 * 1024 * 1024), "image/png")
    assert answer.status_code == 413


def test_monitoring_is_off(web_server):
    for path in ("/monitoring", "/monitoring/summary", "/monitoring/anykey"):
        response = fetch(web_server, path)
        assert response.status_code == 403 and b"Monitoring is not enabled" in response.content, path
