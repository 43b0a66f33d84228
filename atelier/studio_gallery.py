"""The Studio's plain gallery calls (get, search, favourites, tags, deletes, stored files), split from
atelier/studio.py: each passes straight to storage.gallery.Gallery."""

from __future__ import annotations

from pathlib import Path

from atelier.studio_values import GalleryFilters
from storage.gallery import Gallery, Generation, Page


class GalleryViews:
    """Mixed into Studio: needs `self.gallery`."""

    gallery: Gallery

    def get(self, generation_id: int) -> Generation:
        return self.gallery.get(generation_id)

    def search(
        self,
        query: str | None = None,
        filters: GalleryFilters = GalleryFilters(),
        *,
        limit: int = 50,
        after: str | None = None,
    ) -> Page:
        return self.gallery.search(query, limit=limit, after=after, **filters.as_search_arguments())

    def set_favourite(self, generation_id: int, favourite: bool) -> Generation:
        return self.gallery.set_favourite(generation_id, favourite)

    def delete(self, generation_id: int) -> tuple[str, ...]:
        return self.gallery.delete(generation_id)

    def set_tags(self, generation_id: int, tags: list[str]) -> Generation:
        return self.gallery.set_tags(generation_id, tags)

    def tags_in_use(self) -> list[str]:
        return self.gallery.tags_in_use()

    def stored_file(self, sha256: str) -> Path:
        """Where the gallery keeps a file it stores by sha256 (a source or control image)."""
        return self.gallery.file_path(sha256)

    def read_file(self, sha256: str) -> bytes:
        """A stored file's bytes, checked against its sha256 (a damaged file is an error, never exported)."""
        return self.gallery.read_file(sha256)
