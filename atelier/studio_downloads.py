"""The Studio's Download files, split from atelier/studio.py: a generation's PNG under a name that says what it
is, and a draft's full VAE decode (its gallery image is a cheap preview)."""

from __future__ import annotations

import uuid
from pathlib import Path

from atelier.edit_inputs import InputFiles, stored_inputs
from pipelines.errors import OutOfMemory
from pipelines.provenance.png_metadata import encode_png
from storage.gallery import Generation


class Downloads:
    """Mixed into Studio: needs `self.gallery`, `self.home`, `self.engine`, `self.load_draft` and
    `self._lora_autov3`."""

    def download_path(self, generation_id: int) -> Path:
        """The generation's PNG under a name that says what it is (`atelier-<id>-<seed>.png`): a link in
        <home>/downloads to the gallery's own file (same bytes, metadata and watermark), for a browser's
        Download button."""
        generation = self.gallery.get(generation_id)
        folder = self.downloads_folder()
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / f"atelier-{generation.id}-{generation.recipe.seed}.png"
        target = self._full_draft_file(generation) or generation.image_path  # a cheap draft preview: the full decode
        if not (link.is_symlink() and link.resolve() == target.resolve()):
            temporary = link.with_name(f".{link.name}.{uuid.uuid4().hex}")
            temporary.symlink_to(target.resolve())
            temporary.replace(link)  # atomic: another page asking at the same time sees a whole link
        return link

    def downloads_folder(self) -> Path:
        return self.home / "downloads"

    def _full_draft_file(self, generation: Generation) -> Path | None:
        """A draft whose gallery image is a cheap preview (see pipelines/engine/previews.py): the full VAE decode
        of its kept clean estimate, as a PNG with its recipe, made on first demand and kept by the preview's
        sha256. None for every other entry (its gallery file is the full image), or if it cannot be decoded
        here (the model is gone): the preview is shown then."""
        latent = generation.latent_path
        if generation.kind != "draft" or latent is None or generation.files_missing or not latent.exists():
            return None
        path = self.downloads_folder() / "full-drafts" / f"{generation.image_sha256}.png"
        if path.exists():
            return path
        draft = self.load_draft(generation.id)
        if draft.latent.clean_estimate is None:
            return None
        inputs = stored_inputs(draft.recipe, self.gallery.read_file) if draft.recipe.inpaints else InputFiles()
        try:
            image = self.engine.full_draft_image(draft, inputs=inputs.images)
        except (ValueError, OutOfMemory, FileNotFoundError):
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        temporary.write_bytes(encode_png(image, draft.recipe, self._lora_autov3(draft.recipe)))
        temporary.replace(path)
        return path
