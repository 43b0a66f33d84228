"""`atelier serve`: the studio in the browser (Gradio), on 127.0.0.1 unless told otherwise with a login."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from atelier.cluster.options import add_cluster_options, open_serve_studio
from atelier.commands.common import add_device_options, add_model_options, choose, open_studio
from atelier.server_file import ServerRecord, local_url, remove_server_file, write_server_file


def register(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="start the web studio (Draft & Refine, Gallery, …)")
    add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on; other than loopback needs --auth")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--auth", metavar="USER:PASS", help="require this login (needed with a non-loopback --host)")
    serve.add_argument(
        "--allowed-hosts",
        metavar="NAME,…",
        help="host names (or NAME:PORT) the browser may use besides localhost/127.0.0.1/[::1] on --port, "
        "e.g. the machine's LAN name when serving with --host 0.0.0.0; any other Host is refused (403)",
    )
    serve.add_argument(
        "--queue-size",
        type=int,
        help="jobs that may wait for the GPU; one more is told the queue is "
        "full (default: $ATELIER_QUEUE_SIZE, else 16)",
    )
    serve.add_argument(
        "--queue-per-client",
        type=int,
        help="jobs one client address may have waiting (default: half the queue size)",
    )
    add_device_options(serve)
    add_cluster_options(serve)
    serve.add_argument("--no-warm-up", action="store_true", help="load the models on the first job, not at start-up")
    serve.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from webui.security import check_listen, parse_allowed_hosts, parse_auth

    auth = parse_auth(args.auth)
    check_listen(args.host, auth)  # refused before anything heavy is loaded
    allowed_hosts = parse_allowed_hosts(args.allowed_hosts)
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port: must be from 1 to 65535 (got {args.port})")
    from webui.app import queue_size_default, set_environment

    queue_size = queue_size_default() if args.queue_size is None else args.queue_size
    if queue_size < 1:
        raise ValueError(f"--queue-size: must be at least 1 (got {queue_size})")
    from webui.fair_queue import QueueLimits

    QueueLimits.default_for(queue_size, args.queue_per_client)  # refused before anything heavy is loaded

    set_environment(args.home)
    from webui.app import build_app, clear_stale_uploads, launch, make_context, warm_up

    choice = choose(args)
    studio = open_serve_studio(args, choice, open_studio)  # --cluster: engine jobs on GPU workers
    try:
        clear_stale_uploads(args.home)  # the home is held now: no other server is using its uploads
        if choice.demo:  # a tiny LoRA and ControlNet beside the demo model: every tab can be tried
            studio.install_demo_extras()
        ctx = make_context(studio, choice)
        if choice.demo:
            print(
                "atelier serve: no SDXL weights found; using the demo model with random weights "
                "(set --model to an SDXL checkpoint)",
                file=sys.stderr,
            )
        demo = build_app(ctx, queue_size=queue_size, per_client=args.queue_per_client)
        if args.no_warm_up:
            from webui.security import no_downloads_from_here

            no_downloads_from_here()  # web requests never download (the warm-up sets this once models are in)
        else:
            warm_up(ctx)
        print(f"atelier serve: http://{args.host}:{args.port}", file=sys.stderr, flush=True)
        launch(demo, ctx, host=args.host, port=args.port, auth=auth, allowed_hosts=allowed_hosts, block=False)
        with announced(args.home, local_url(args.host, args.port), choice, login=auth is not None):
            demo.block_thread()
    finally:
        studio.close()
    return 0


@contextlib.contextmanager
def announced(home, url: str, choice, *, login: bool):
    """<home>/server.json names this server while it listens, so `atelier draft|refine|…` on the same home
    use it (atelier/commands/remote.py); removed when it stops, also on SIGTERM (then it dies as before)."""
    record = ServerRecord(url=url, pid=os.getpid(), base=choice.base, refiner=choice.refiner, login=login)
    write_server_file(home, record)

    def on_term(signum, frame):
        remove_server_file(home)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        remove_server_file(home)
