"""`atelier serve`: the studio in the browser (Gradio), on 127.0.0.1 unless told otherwise with a login."""

from __future__ import annotations

import sys

from atelier.commands.common import add_device_options, add_model_options, choose, open_studio


def register(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="start the web studio (Draft & Refine, Gallery, …)")
    add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on; other than loopback needs --auth")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--auth", metavar="USER:PASS", help="require this login (needed with a non-loopback --host)")
    serve.add_argument(
        "--queue-size",
        type=int,
        help="jobs that may wait for the GPU; one more is told the queue is "
        "full (default: $ATELIER_QUEUE_SIZE, else 16)",
    )
    add_device_options(serve)
    serve.add_argument("--no-warm-up", action="store_true", help="load the models on the first job, not at start-up")
    serve.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from webui.security import check_listen, parse_auth

    auth = parse_auth(args.auth)
    check_listen(args.host, auth)  # refused before anything heavy is loaded
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port: must be from 1 to 65535 (got {args.port})")
    from webui.app import queue_size_default, set_environment

    queue_size = queue_size_default() if args.queue_size is None else args.queue_size
    if queue_size < 1:
        raise ValueError(f"--queue-size: must be at least 1 (got {queue_size})")

    set_environment(args.home)
    from webui.app import build_app, launch, make_context, warm_up

    choice = choose(args)
    studio = open_studio(args)
    try:
        if choice.demo:  # a tiny LoRA and ControlNet beside the demo model: every tab can be tried
            studio.install_demo_extras()
        ctx = make_context(studio, choice)
        if choice.demo:
            print(
                "atelier serve: no SDXL weights found; using the demo model with random weights "
                "(set --model to an SDXL checkpoint)",
                file=sys.stderr,
            )
        demo = build_app(ctx, queue_size=queue_size)
        if not args.no_warm_up:
            warm_up(ctx)
        print(f"atelier serve: http://{args.host}:{args.port}", file=sys.stderr, flush=True)
        launch(demo, ctx, host=args.host, port=args.port, auth=auth, block=True)
    finally:
        studio.close()
    return 0
