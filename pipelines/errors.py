"""Exceptions the engine raises that callers handle by kind. Standard library only, so front ends
can catch them without importing torch."""


class GenerationCancelled(Exception):
    """The caller's `should_cancel` returned True; the run stopped at the next step."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory; memory has been released and the next job can run."""
