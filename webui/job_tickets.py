"""The device queue's bookkeeping for one job (its page, its browser, its pace) and the wait it implies."""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Stopped:
    """What an Interrupt reached: running jobs (they report at their next step) and waiting ones."""

    running: int
    waiting: int
    other_pages: bool = False  # they were started by an earlier page of the same browser (before a reload)

    def __bool__(self) -> bool:
        return self.running + self.waiting > 0


@dataclass
class Ticket:
    """One job from the click that queued it to its end."""

    session: str  # the page (Gradio session) that queued the job
    cancel: threading.Event
    reserved_at: float
    browser: str | None = None  # the browser of that page, when it told us (it stays the same across reloads)
    started: bool = False
    device_since: float | None = None  # when it got a device
    progress: tuple[int, int, float] | None = None  # (step, steps in its stage, when) of its latest step

    def seconds_left(self, now: float) -> float | None:
        """How long it should still hold the device, from the pace of its steps so far (None before its first)."""
        if self.progress is None or self.device_since is None:
            return None
        step, total, at = self.progress
        if step < 1 or total < step:
            return None
        per_step = (at - self.device_since) / step
        return max(0.0, per_step * total - (now - self.device_since))


def wait_for_a_device(left: list[float | None], slots: int, before: int, typical: float | None) -> float | None:
    """Seconds until one of `slots` devices is free for a job with `before` jobs to start ahead of it, when the
    jobs on the devices have `left` seconds to go and a job takes `typical` seconds; None if any is unknown."""
    if None in left or (before and typical is None):
        return None
    # Each slot is free when its job ends (a job that only saves has given its slot up: the largest count).
    free_at = (sorted(left)[-slots:] + [0.0] * slots)[:slots]
    heapq.heapify(free_at)
    for _ in range(before):
        heapq.heappush(free_at, heapq.heappop(free_at) + typical)
    return free_at[0]
