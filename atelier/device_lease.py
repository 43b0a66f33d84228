"""A job's hold on the device, so the next job can use the device while this one only saves.

A job runner (the web queue, `webui.jobs.GpuJobs`) holds a device slot for each job. Once the job's
engine work is over, what remains — PNG encodes, hashing, file writes, the gallery commit on the
`SavePool` — needs no device. The Studio says so through the job's lease: `device_free()` when it
starts waiting for its saves (the slot goes to the next job), `device_needed()` whenever it uses the
engine (a job that saves in the middle, e.g. a draft then its refine, takes a slot again first, so
two jobs never run on one device at once).

The lease lives in a ContextVar set on the job's own thread: the save pool's threads and code
outside a job runner (the CLI, the tests) see none, and both calls do nothing there.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from contextvars import ContextVar

_current: ContextVar[DeviceLease | None] = ContextVar("atelier_device_lease", default=None)


class FairSlots:
    """A semaphore that serves its waiters in the order they came (threading's does not), so the queue's
    order holds while two jobs wait for the device; a job taking its slot back goes first."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._line: collections.deque = collections.deque()
        self._changed = threading.Condition()

    def acquire(self, *, first: bool = False) -> None:
        with self._changed:
            me = object()
            self._line.appendleft(me) if first else self._line.append(me)
            while self._line[0] is not me or self._free == 0:
                self._changed.wait()
            self._line.popleft()
            self._free -= 1
            self._changed.notify_all()  # the next in line may find a free slot too

    def release(self) -> None:
        with self._changed:
            self._free += 1
            self._changed.notify_all()

    def waiting(self) -> int:
        """Jobs in line for a slot now."""
        with self._changed:
            return len(self._line)

    def __enter__(self) -> FairSlots:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class DeviceLease:
    """One job's slot of `slots` (acquired for it by the runner before the job started). `on_change(held)` is
    told each time the job gives its slot up or takes it back while it runs."""

    def __init__(self, slots: FairSlots, on_change: Callable[[bool], None] = lambda held: None) -> None:
        self._slots, self._on_change = slots, on_change
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._slots.release()
            self._on_change(False)

    def acquire(self) -> None:
        if not self.held:
            self._slots.acquire(first=True)  # the job is under way: ahead of jobs not started yet
            self.held = True
            self._on_change(True)

    def end(self) -> None:
        """The job is over: its slot is free (if it still held one)."""
        if self.held:
            self.held = False
            self._slots.release()
        else:
            self._on_change(True)  # no longer a job running without a slot


def hold(lease: DeviceLease | None) -> None:
    """Make `lease` the current thread's (the runner calls this on the job's thread; None: no lease)."""
    _current.set(lease)


def device_free() -> None:
    """The job's device work is over for now: its slot may go to the next job."""
    lease = _current.get()
    if lease is not None:
        lease.release()


def device_needed() -> None:
    """The job is about to use the device: take a slot again if it had given it up (waits for one)."""
    lease = _current.get()
    if lease is not None:
        lease.acquire()
