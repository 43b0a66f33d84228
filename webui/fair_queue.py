"""Fair shares of Gradio's queue: jobs for the device are limited in total and per client address, and
quick events (gallery browsing, previews) have their own room, so a full device queue never refuses them.

Gradio counts one `max_size` over every event; here its `push` is wrapped so each kind is counted
apart. A refusal is Gradio's own "queue full" answer (HTTP 503, which gradio_client reports as
QueueError; `security.QueueFullMessage` turns it into words for browsers).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.jobs import GPU, GpuJobs

QUICK_EVENTS_PER_GPU_SLOT = 4  # room for quick events: this many times the device queue's size
FULL = "Queue is full"  # QueueFullMessage and gradio_client look for these words


@dataclass(frozen=True)
class QueueLimits:
    gpu_waiting: int  # device jobs waiting, all clients together
    per_client: int  # device jobs waiting from one client address

    def __post_init__(self) -> None:
        if self.gpu_waiting < 1:
            raise ValueError(f"--queue-size: must be at least 1 (got {self.gpu_waiting})")
        if not 1 <= self.per_client <= self.gpu_waiting:
            raise ValueError(
                f"--queue-per-client: must be from 1 to the queue size {self.gpu_waiting} (got {self.per_client})"
            )

    @classmethod
    def default_for(cls, size: int, per_client: int | None = None) -> QueueLimits:
        """`per_client` defaults to half the queue (at least 1): one client never takes every slot."""
        return cls(gpu_waiting=size, per_client=per_client if per_client is not None else max(1, size // 2))


def client_of(request: Any) -> str:
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "unknown"


def install(demo: gr.Blocks, limits: QueueLimits, jobs: GpuJobs) -> None:
    """Replace Gradio's single queue limit on `demo` (after `demo.queue()`) by the fair limits, and let the
    device's queue start the next job while one only saves (`jobs`' concurrency)."""
    queue = demo._queue
    jobs.on_concurrency_change(functools.partial(_set_device_concurrency, demo))
    queue.max_size = None  # counted here instead, per kind of event
    original: Callable[..., Awaitable[tuple]] = queue.push

    async def push(body, request, username):
        refusal = _refusal(demo, limits, body, request, jobs.waiting_for_a_slot())
        if refusal is not None:
            return False, refusal, "queue_full"
        return await original(body=body, request=request, username=username)

    queue.push = push


def _refusal(demo: gr.Blocks, limits: QueueLimits, body: Any, request: Any, out_of_queue: int) -> str | None:
    queue = demo._queue
    fn = demo.fns.get(body.fn_index) if body.fn_index is not None else None
    waiting = {key: list(q.queue) for key, q in queue.event_queue_per_concurrency_id.items()}
    if fn is None or fn.concurrency_id != GPU:
        quick = sum(len(events) for key, events in waiting.items() if key != GPU)
        room = limits.gpu_waiting * QUICK_EVENTS_PER_GPU_SLOT
        return f"{FULL}: {room} quick requests are waiting already." if quick >= room else None
    gpu = waiting.get(GPU, [])
    if len(gpu) + out_of_queue >= limits.gpu_waiting:
        return f"{FULL}. Max size is {limits.gpu_waiting} and size is {len(gpu) + out_of_queue}."
    client = client_of(request)
    mine = sum(1 for event in gpu if client_of(event.request) == client)
    if mine >= limits.per_client:
        return (
            f"{FULL} for your address: {mine} of its jobs are waiting (at most {limits.per_client} per client, "
            "so others get a turn). Try again when one has started."
        )
    return None


def _set_device_concurrency(demo: gr.Blocks, limit: int) -> None:
    """Gradio's limit for the device's events (its queue loop reads it each time it looks for work)."""
    device_events = demo._queue.event_queue_per_concurrency_id.get(GPU)
    if device_events is not None:
        device_events.concurrency_limit = limit
