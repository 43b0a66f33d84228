"""Saving what the engine made, off the device's path: PNG encode, hashing, file writes, the gallery commit.

The device should never wait on the CPU. Once the engine hands back an image (decoded and, when the
recipe asks, watermarked — both on the device's thread), the rest is CPU work: the PNG encode
(zlib), the latent's bytes, hashing, the file writes and the database commit. `SavePool` runs it on
a small pool of threads (numpy, zlib, hashlib and sqlite release the GIL) while the caller goes on
with the next engine run — the next draft of `Studio.draft_each`, say.

- **Two stages.** `encode` (PNG and latent bytes) runs on up to `workers` threads at once; `commit`
  (`Gallery.save`: files first, then the rows, in one transaction) runs on one thread, in the order
  of submission, so ids keep the order of the drafts.
- **Bounded.** At most `max_pending` encodes are queued or running; `encode` blocks the caller
  beyond that, so a fast device cannot pile up full-size images in memory.
- **Crash safety unchanged.** A row is only committed after its files are written (Gallery.save
  does both, in that order, on the commit thread); an image whose save had not finished when the
  process died was never reported saved.
- `workers=0` does everything inline, in the caller's thread (the serial baseline of `atelier bench`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from atelier.device_lease import device_free
from pipelines.provenance.png_metadata import encode_png
from pipelines.recipe import Recipe
from storage.gallery import Gallery, Generation, NotFoundError

T = TypeVar("T")
DEFAULT_WORKERS = 2
DEFAULT_MAX_PENDING = 4


@dataclass(frozen=True, kw_only=True)
class Saved:
    """A generation as the studio hands it back: its gallery id, files and recipe."""

    id: int
    recipe: Recipe
    image: Path
    latent: Path | None = None
    reused: bool = False  # an existing entry made from the same request (nothing new was stored)
    notes: tuple[str, ...] = ()  # how the engine adjusted the request to run it, in words for the user

    def as_json(self) -> dict[str, Any]:
        data = {"id": self.id, "seed": self.recipe.seed, "image": str(self.image)}
        if self.latent is not None:
            data["latent"] = str(self.latent)
        return data


def saved_from(generation: Generation, notes: tuple[str, ...] = ()) -> Saved:
    return Saved(
        id=generation.id,
        recipe=generation.recipe,
        image=generation.image_path,
        latent=generation.latent_path,
        notes=notes,
    )


@dataclass(frozen=True, kw_only=True)
class Encoded:
    """What a save writes: the PNG (recipe inside) and, for a draft, its kept latent."""

    recipe: Recipe
    png: bytes
    latent: bytes | None = None
    notes: tuple[str, ...] = ()


def encode_draft(draft, lora_autov3: Mapping[str, str]) -> Encoded:
    """A Draft's PNG (its preview) and latent bytes: the CPU part of its save."""
    return Encoded(
        recipe=draft.recipe,
        png=encode_png(draft.preview, draft.recipe, lora_autov3),
        latent=draft.latent.to_bytes(draft.recipe.to_json()),
        notes=tuple(draft.notes),
    )


def encode_finished(finished, lora_autov3: Mapping[str, str]) -> Encoded:
    """A FinishedImage's PNG: the CPU part of its save."""
    return Encoded(
        recipe=finished.recipe,
        png=encode_png(finished.image, finished.recipe, lora_autov3),
        notes=tuple(finished.notes),
    )


def commit_draft(
    gallery: Gallery,
    encoded: Encoded,
    *,
    batch_id: str | None = None,
    parent_id: int | None = None,
    inputs: Mapping[str, bytes] | None = None,
) -> Saved:
    generation = gallery.save(
        encoded.recipe,
        "draft",
        encoded.png,
        parent_id=parent_id,
        batch_id=batch_id,
        latent=encoded.latent,
        inputs=inputs,
    )
    return saved_from(generation, encoded.notes)


def commit_final(
    gallery: Gallery, encoded: Encoded, kind: str, *, parent_id: int | None, inputs: Mapping[str, bytes] | None = None
) -> Saved:
    try:
        generation = gallery.save(encoded.recipe, kind, encoded.png, parent_id=parent_id, inputs=inputs)
    except NotFoundError:
        if parent_id is None:
            raise
        # The parent was deleted while this image was being made: keep the image, without lineage.
        generation = gallery.save(encoded.recipe, kind, encoded.png, inputs=inputs)
    return saved_from(generation, encoded.notes)


class SavePool:
    """Encodes on `workers` threads (bounded by `max_pending`), commits on one thread in submission order."""

    def __init__(self, workers: int = DEFAULT_WORKERS, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if workers < 0 or max_pending < 1:
            raise ValueError(f"save pool: workers must be ≥ 0 and max_pending ≥ 1 (got {workers}, {max_pending})")
        self.workers = workers
        self._slots = threading.BoundedSemaphore(max_pending)
        self._encoders = ThreadPoolExecutor(workers, thread_name_prefix="atelier-encode") if workers else None
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="atelier-commit") if workers else None

    def encode(self, work: Callable[[], T]) -> Future[T]:
        """Start CPU work (blocks while max_pending encodes are in flight)."""
        if self._encoders is None:
            return _done(work)
        self._slots.acquire()
        try:
            future = self._encoders.submit(work)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def commit(self, encoded: Future, save: Callable[[Any], T]) -> Future[T]:
        """`save(encoded result)` on the commit thread, after the commits submitted before it."""
        if self._committer is None:
            return _done(lambda: save(encoded.result()))
        return self._committer.submit(lambda: save(encoded.result()))

    def close(self) -> None:
        """Wait for every submitted save, then stop the threads."""
        for executor in (self._encoders, self._committer):
            if executor is not None:
                executor.shutdown(wait=True)


def _done(work: Callable[[], T]) -> Future[T]:
    future: Future[T] = Future()
    try:
        future.set_result(work())
    except Exception as exc:  # handed to whoever asks for the result, as the pool would
        future.set_exception(exc)
    return future


def wait_all(futures: list[Future]) -> None:
    """Wait until every future is done (whatever its outcome). Only saves remain then: within a job of the
    web queue, the device goes to the next job meanwhile."""
    device_free()
    for future in futures:
        future.exception()


def results(futures: list[Future[T]]) -> list[T]:
    """Every future's result, in order; all are waited for even when one fails (none left running)."""
    device_free()
    errors = [f.exception() for f in futures]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return [f.result() for f in futures]
