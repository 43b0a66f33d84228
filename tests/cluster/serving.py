"""What the cluster tests share: the Studio `atelier serve --cluster ADDRESS --workers 1` builds, pixel hashes,
a job on its own thread (as the web queue runs one), and waiting for a condition."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time

import numpy as np
from PIL import Image


def pixels(image_or_path) -> str:
    image = Image.open(image_or_path) if not isinstance(image_or_path, Image.Image) else image_or_path
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


@contextlib.contextmanager
def served_studios(address: str, make_tiny_home, name: str):
    """(the Studio `atelier serve --cluster ADDRESS --workers 1` makes, a single-process Studio for references)."""
    from atelier.cli import build_parser
    from atelier.cluster.options import open_serve_studio
    from atelier.commands.common import choose, open_studio
    from atelier.studio import Studio

    home = make_tiny_home(name=f"{name}-home")
    argv = ["serve", "--home", str(home), "--model", "tiny", "--refiner", "tiny", "--device", "cpu"]
    args = build_parser().parse_args([*argv, "--cluster", address, "--workers", "1"])
    studio = open_serve_studio(args, choose(args), open_studio)
    reference = Studio(make_tiny_home(name=f"{name}-reference"), device="cpu")
    try:
        yield studio, reference
    finally:
        studio.close()
        reference.close()


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


class JobThread:
    """Runs `call` on its own thread, as the web queue runs a job; `.result()` waits for its value."""

    def __init__(self, call) -> None:
        self.value, self.error = None, None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call) -> None:
        try:
            self.value = call()
        except Exception as exc:  # the test looks at it
            self.error = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the job did not end within {timeout} s"

    def result(self, timeout: float = 300):
        self.join(timeout)
        if self.error is not None:
            raise self.error
        return self.value
