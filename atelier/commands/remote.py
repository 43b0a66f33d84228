"""The generating commands on a running `atelier serve` (its API: webui/cli_api.py), so scripted runs do
not load the models each time.

Which server: `--server URL`, else the one <home>/server.json names when its process is alive and it
answers; `--local` always runs in this process. A login (`atelier serve --auth`) comes from
`--server-auth USER:PASS` or $ATELIER_SERVER_AUTH. Everything a command can check by itself is checked
before the server is contacted; the server checks the rest (a gallery id, its models) outside its device
queue, then queues the job with the browser's. gradio_client (a small HTTP client) is imported only here,
only when a server is used: neither torch nor the studio load in the command's process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from atelier import server_wire as wire
from atelier.commands.common import tell
from atelier.server_file import read_server_file, server_file
from atelier.studio_values import ordinal

AUTH_ENV = "ATELIER_SERVER_AUTH"
POLL_S = 0.05  # how often a waiting command looks whether its job is done
ANSWER_TIMEOUT_S = 2.0  # how long a server named in server.json has to answer before it is taken as gone


def add_server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a running `atelier serve` (its loaded models, its queue)")
    group.add_argument(
        "--server",
        metavar="URL",
        help="run on this server, e.g. http://127.0.0.1:7860 (default: the one <home>/server.json names, when it answers)",
    )
    group.add_argument("--local", action="store_true", help="run in this process even when a server is up")
    group.add_argument(
        "--server-auth", metavar="USER:PASS", help=f"the server's login, if it has one (default: ${AUTH_ENV})"
    )


@dataclass
class Server:
    url: str
    command: str  # for messages: "draft", "refine", …
    auth: tuple[str, str] | None = None
    _client: Any = None

    def run(self, job: dict) -> dict:
        """The job's checks on the server (outside its device queue), then the job; its answer."""
        self._call(wire.CHECK, job)
        return self._call(wire.JOB, job)

    def info(self) -> dict:
        return json.loads(self._predict(wire.INFO))

    def _call(self, endpoint: str, job: dict) -> dict:
        answer = json.loads(self._predict(endpoint, json.dumps(job)))
        if "error" in answer:
            raise (ValueError if answer.get("exit") == 2 else OSError)(answer["error"])
        return answer

    def _predict(self, endpoint: str, *values: Any) -> str:
        import httpx
        from gradio_client.exceptions import AppError
        from gradio_client.utils import QueueError

        client = self.connected()
        try:
            return _waited_for(client.submit(*values, api_name=f"/{endpoint}"), self.command)
        except QueueError as exc:
            raise OSError(f"the server at {self.url} is busy: {exc} (or run here with --local)") from None
        except AppError as exc:  # (a ValueError) the server's own error, in general words
            raise OSError(f"the server at {self.url} did not finish this: {exc}") from None
        except ValueError as exc:  # gradio_client: no such endpoint
            raise OSError(f"the server at {self.url} has no command-line API ({exc}); an older atelier?") from None
        except (OSError, httpx.HTTPError) as exc:
            raise OSError(f"the server at {self.url} stopped answering: {exc}") from None

    def connected(self):
        """The gradio_client Client, made on first use (it reads the server's API)."""
        if self._client is None:
            from gradio_client import Client

            try:
                self._client = Client(
                    self.url + "/", auth=self.auth, verbose=False, download_files=False, analytics_enabled=False
                )
            except ValueError as exc:
                if self.auth is not None and "login" in str(exc):
                    raise ValueError(f"--server-auth: the server at {self.url} refused this login") from None
                raise OSError(f"cannot use the server at {self.url}: {exc} (or run here with --local)") from None
            except Exception as exc:  # gradio_client says "could not fetch config", … in many types
                raise OSError(f"cannot use the server at {self.url}: {exc} (or run here with --local)") from None
        return self._client


def _waited_for(job, command: str) -> Any:
    """The job's result, waiting in short sleeps so Ctrl-C is felt at once (a blocking wait would not be),
    saying on stderr where it waits in the server's queue while it does. Ctrl-C takes a job still in the
    server's queue out of it; one already running is finished and saved."""
    place = None
    try:
        while not job.done():
            status = job.status()
            waiting = status.rank if status.code.name == "IN_QUEUE" and status.rank is not None else None
            if waiting is not None and waiting != place:
                print(f"atelier {command}: waiting, {ordinal(waiting + 1)} in the server's queue", file=sys.stderr)
            place = waiting
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        job.cancel()
        raise
    return job.result()


def find_server(args: argparse.Namespace, command: str, *, local_only: str | None = None) -> Server | None:
    """The server this command runs on, or None to run here. `local_only`: why this request cannot go to a
    server (e.g. it names files of this machine); refused with an explicit --server, else it runs here."""
    if args.local and args.server:
        raise ValueError("--local: give --local or --server URL, not both")
    if args.local:
        return None
    if args.server:
        url = _checked_url(args.server)
        if local_only:
            raise ValueError(f"--server: {local_only}; run it here with --local")
    else:
        record = read_server_file(args.home)
        if record is None:
            return None
        if local_only:
            tell(command, [f"{local_only}: running here, not on the server at {record.url}"])
            return None
        if not _answers(record.url):
            tell(command, [f"{server_file(args.home)} names {record.url}, which does not answer: running here"])
            return None
        if record.login and not (args.server_auth or os.environ.get(AUTH_ENV)):
            raise ValueError(
                f"--server-auth: the server at {record.url} asks for a login; give --server-auth USER:PASS "
                f"or set ${AUTH_ENV} (or run here with --local)"
            )
        url = record.url
    server = Server(url=url, command=command, auth=_login(args.server_auth or os.environ.get(AUTH_ENV)))
    try:
        served = server.info()  # also: is it an `atelier serve` with this API
    except OSError as exc:
        if args.server:
            raise
        tell(command, [f"{exc}: running here"])
        return None
    _check_models(server.url, served, args)
    _note_unused_options(args, command)
    print(f"atelier {command}: using the running server at {url}", file=sys.stderr, flush=True)
    return server


def _check_models(url: str, served: dict, args: argparse.Namespace) -> None:
    """--model / --refiner, when given, must be what the server serves (it loads no other)."""
    if getattr(args, "model", None) is None and getattr(args, "refiner", None) is None:
        return
    from atelier.commands.common import choose

    wanted = choose(args)
    if (wanted.base, wanted.refiner) != (served["base"], served["refiner"]):
        runs, asks = _models_in_words(served["base"], served["refiner"]), _models_in_words(wanted.base, wanted.refiner)
        raise ValueError(
            f"--model/--refiner: the server at {url} runs {runs}; this asks for {asks}. Run it here with --local "
            f"(it loads that model in this process), or leave --model/--refiner out to use the server's"
        )


def _models_in_words(base: str, refiner: str | None) -> str:
    return f"{base!r} " + (f"with the refiner {refiner!r}" if refiner else "without a refiner")


OWN_OPTIONS = {  # the server's own settings: a command's values are not sent
    "--device": "device",
    "--dtype": "dtype",
    "--cpu-offload": "cpu_offload",
    "--vae-tiling": "vae_tiling",
    "--database": "database",
    "--files": "files_dir",
}


def _note_unused_options(args: argparse.Namespace, command: str) -> None:
    given = [name for name, dest in OWN_OPTIONS.items() if getattr(args, dest, None)]
    if given:
        tell(command, [f"{', '.join(given)}: the server's own settings are used (--local runs here with them)"])


def _login(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError(f"--server-auth: expected USER:PASS (or ${AUTH_ENV} set so)")
    return user, password


def _checked_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise ValueError(f"--server: expected a URL like http://127.0.0.1:7860 (got {url!r})")
    return url


def _answers(url: str) -> bool:
    """Whether anything answers HTTP at `url` (a login page or a refusal counts: it is running)."""
    try:
        with urllib.request.urlopen(url + "/config", timeout=ANSWER_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
