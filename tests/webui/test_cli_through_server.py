"""`atelier draft|refine|rerun|vary|upscale` on a running `atelier serve` (webui/cli_api.py,
atelier/commands/remote.py): one real server on the tiny model for the module; its drafts must have the
pixels of the same command run locally, the client must not load torch, and a stale <home>/server.json,
a bad request and a --model the server does not run must be handled without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from atelier.cli import main
from atelier.server_file import SERVER_FILE
from tests.webui.conftest import start_server

pytestmark = pytest.mark.slow
SMALL = ["--steps", "3", "--width", "64", "--height", "64"]
HEAVY = ("torch", "diffusers", "transformers", "gradio", "sqlalchemy")
PROBE = f"""
import json, sys
from atelier.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "loaded": [m for m in {HEAVY!r} + ("gradio_client",) if m in sys.modules]}}), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, make_tiny_home):
    from atelier.ui_bench import stop

    running = start_server(make_tiny_home(tmp_path_factory.mktemp("cli-serve") / "home"))
    deadline = time.monotonic() + 30
    while not (running.home / SERVER_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield running
    stop(running.process)


def probe(*argv: str) -> tuple[dict, subprocess.CompletedProcess]:
    """The CLI in a fresh interpreter: (its exit status and heavy modules loaded, the process)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("ATELIER_MODELS", None)
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=300)
    return json.loads(done.stderr.strip().splitlines()[-1]), done


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pixels(path: str | Path) -> str:
    with Image.open(path) as image:
        return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def test_the_server_names_itself_in_its_home(served):
    record = json.loads((served.home / SERVER_FILE).read_text())
    assert record == {"url": served.url, "pid": served.process.pid, "base": "tiny", "refiner": "tiny", "login": False}


def test_a_draft_on_the_server_has_the_pixels_of_a_local_draft(served, make_tiny_home, tmp_path, capsys):
    argv = ["draft", "--prompt", "a lighthouse", "--seed", "4242", "--count", "2", *SMALL, "--json"]
    report, done = probe(*argv, "--home", str(served.home))
    assert report["code"] == 0, done.stderr
    assert f"atelier draft: using the running server at {served.url}" in done.stderr
    assert not set(report["loaded"]) & set(HEAVY), f"the client imported {report['loaded']}"
    remote = json.loads(done.stdout)["drafts"]
    with served.gallery() as gallery:
        rows = [gallery.get(d["id"]) for d in remote]
    assert [row.recipe.seed for row in rows] == [4242, 4243]
    assert all(Path(d["image"]).is_file() and Path(d["latent"]).is_file() for d in remote)
    assert [str(row.image_path) for row in rows] == [d["image"] for d in remote]

    # The same command in this process, on a second home with the same tiny model. That home's
    # server.json names the live server: --local runs here all the same.
    local_home = make_tiny_home(tmp_path / "local")
    (local_home / SERVER_FILE).write_text((served.home / SERVER_FILE).read_text())
    code, out, err = run_cli(capsys, *argv, "--home", str(local_home), "--local")
    assert code == 0, err
    assert "using the running server" not in err
    local = json.loads(out)["drafts"]
    assert [Path(d["image"]).is_relative_to(local_home) for d in local] == [True, True]
    assert [pixels(d["image"]) for d in remote] == [pixels(d["image"]) for d in local]


def test_refine_rerun_vary_and_upscale_of_a_server_draft(served, tmp_path, capsys):
    code, out, err = run_cli(capsys, "draft", "--home", str(served.home), "--prompt", "a boat", "--seed", "7", "--count", "1", *SMALL, "--json")  # fmt: skip
    assert code == 0, err
    draft = json.loads(out)["drafts"][0]["id"]
    made = {}
    for name, extra in (
        ("refine", []),
        ("rerun", []),
        ("vary", ["--count", "2", "--variation-seed", "100"]),
        ("upscale", ["--scale", "1.5", "--steps", "3"]),
    ):
        code, out, err = run_cli(capsys, name, str(draft), *extra, "--home", str(served.home), "--json")
        assert code == 0, f"{name}: {err}"
        assert f"atelier {name}: using the running server at {served.url}" in err
        answer = json.loads(out)
        made[name] = [d["id"] for d in answer["drafts"]] if "drafts" in answer else [answer["id"]]
    with served.gallery() as gallery:
        for name, ids in made.items():
            rows = [gallery.get(i) for i in ids]
            assert [row.parent_id for row in rows] == [draft] * len(ids), name
            assert all(row.image_path.is_file() for row in rows), name
        assert gallery.get(made["refine"][0]).kind == "refined"
        assert [gallery.get(i).recipe.variation_seed for i in made["vary"]] == [100, 101]
        assert (gallery.get(made["upscale"][0]).recipe.width, gallery.get(made["upscale"][0]).recipe.height) == (96, 96)
        original = gallery.get(draft)
        assert pixels(gallery.get(made["rerun"][0]).image_path) == pixels(original.image_path)

    code, _, err = run_cli(capsys, "refine", "98765", "--home", str(served.home))
    assert (code, err.splitlines()[-1]) == (2, "atelier refine: no generation with id 98765")

    # --server names it from anywhere (a home without server.json); its gallery is the server's.
    code, out, err = run_cli(capsys, "rerun", str(draft), "--server", served.url, "--home", str(tmp_path), "--json")
    assert code == 0, err
    with served.gallery() as gallery:
        assert gallery.get(json.loads(out)["id"]).parent_id == draft


def test_a_stale_server_file_is_ignored(served, make_tiny_home, tmp_path, capsys):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    home = make_tiny_home(tmp_path / "stale")
    # A dead process's file, though the URL in it answers: nothing is sent there.
    record = {"url": served.url, "pid": int(gone.stdout), "base": "tiny", "refiner": "tiny", "login": False}
    (home / SERVER_FILE).write_text(json.dumps(record))
    code, out, err = run_cli(capsys, "draft", "--prompt", "a hut", "--seed", "3", "--count", "1", *SMALL, "--home", str(home), "--json")  # fmt: skip
    assert code == 0, err
    assert "using the running server" not in err
    assert Path(json.loads(out)["drafts"][0]["image"]).is_relative_to(home)


def test_a_bad_request_is_refused_here_without_asking_the_server(tmp_path):
    """server.json names a live process and a listening socket that records whether anyone connects."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    home = tmp_path / "home"
    home.mkdir()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    record = {"url": url, "pid": os.getpid(), "base": "tiny", "refiner": "tiny", "login": False}
    (home / SERVER_FILE).write_text(json.dumps(record))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    report, done = probe("draft", "--prompt", "a fox", "--width", "7", "--height", "64", "--home", str(home))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert report["code"] == 2, done.stderr
    assert "width" in done.stderr and "using the running server" not in done.stderr
    assert report["loaded"] == [], f"imported before the refusal: {report['loaded']}"
    assert cpu <= 1.5, f"{cpu:.2f} s of CPU to refuse"
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    listener.close()


def test_a_model_the_server_does_not_run_is_refused(served, capsys):
    code, _, err = run_cli(capsys, "draft", "--prompt", "a", "--refiner", "base", *SMALL, "--home", str(served.home))
    assert code == 2
    assert f"the server at {served.url} runs 'tiny' with the refiner 'tiny'" in err
    assert "this asks for 'tiny' without a refiner" in err and "--local" in err


def test_a_cli_job_waits_behind_a_page_job(served):
    """One device queue: `atelier draft` sent while the page's Draft runs waits, says it is first in the
    server's queue, and is made once the page's job ends."""
    from tests.webui.test_queue import interrupt, submit_draft, wait_status

    page, running = submit_draft(served, "a long job of the page", 500, Width=256, Height=256)
    wait_status(running, "ITERATING")
    argv = ["draft", "--home", str(served.home), "--prompt", "behind it", "--seed", "1", "--steps", "2"]
    argv += ["--width", "64", "--height", "64", "--count", "1", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "atelier.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            cli.wait(timeout=8)  # waits behind the page's job (a run on its own takes about a second)
    finally:
        interrupt(served, page.session_hash)
    out, err = cli.communicate(timeout=120)
    assert cli.returncode == 0, err
    assert "atelier draft: waiting, 1st in the server's queue" in err
    assert [entry["seed"] for entry in json.loads(out)["drafts"]] == [1]


def test_img2img_on_the_server(served, make_tiny_home, tmp_path, capsys):
    """A file sent along gives the pixels of a local img2img of it; a gallery id is the new entry's parent."""
    source = tmp_path / "source.png"
    Image.linear_gradient("L").resize((72, 64)).convert("RGB").save(source)
    argv = ["img2img", "--prompt", "a wall", "--seed", "9", "--steps", "4", "--strength", "0.5", "--json"]
    report, done = probe(*argv, "--image", str(source), "--home", str(served.home))
    assert report["code"] == 0, done.stderr
    assert "atelier img2img: using the running server" in done.stderr
    assert not set(report["loaded"]) & set(HEAVY), f"the client imported {report['loaded']}"
    remote = json.loads(done.stdout)
    code, out, err = run_cli(capsys, *argv, "--image", str(source), "--home", str(make_tiny_home(tmp_path / "l")), "--local")  # fmt: skip
    assert code == 0, err
    local = json.loads(out)
    assert (remote["parent_id"], local["parent_id"]) == (None, None)
    assert pixels(remote["image"]) == pixels(local["image"])
    with Image.open(remote["image"]) as made:
        assert made.size == (72, 64)

    code, out, err = run_cli(capsys, *argv, "--image", str(remote["id"]), "--home", str(served.home))
    assert code == 0, err
    made = json.loads(out)
    with served.gallery() as gallery:
        assert made["parent_id"] == gallery.get(made["id"]).parent_id == remote["id"]
