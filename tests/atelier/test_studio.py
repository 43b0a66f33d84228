"""Studio: engine results in the gallery, lineage, and re-runs to identical pixels."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from pipelines.recipe import ModelRef


def pixel_hash(path):
    with Image.open(path) as image:
        return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from atelier.studio import Studio

    studio = Studio(tmp_path_factory.mktemp("studio-home"), device="cpu")
    yield studio
    studio.close()


def test_drafts_share_a_batch_and_keep_their_latents(studio, tiny_recipe):
    saved = studio.draft(tiny_recipe(), 3)
    generations = [studio.gallery.get(s.id) for s in saved]
    assert [g.kind for g in generations] == ["draft"] * 3
    assert len({g.batch_id for g in generations}) == 1 and generations[0].batch_id
    assert all(g.latent_path and g.latent_path.exists() for g in generations)
    assert [g.recipe.seed for g in generations] == [1234, 1235, 1236]
    assert generations[0].recipe.model.sha256  # the resolved identity of the weights is recorded


def test_refined_from_a_batch_reruns_to_identical_pixels_with_lineage(studio, tiny_recipe):
    drafts = studio.draft(tiny_recipe(seed=50), 4)
    refined = studio.refine(drafts[2].id)
    assert studio.gallery.get(refined.id).parent_id == drafts[2].id
    rerun = studio.rerun(refined.id)
    assert pixel_hash(rerun.image) == pixel_hash(refined.image)
    assert [g.id for g in studio.gallery.ancestors(rerun.id)][:2] == [refined.id, drafts[2].id]
    assert refined.id in [c.id for c in studio.gallery.children(drafts[2].id)]
    draft_again = studio.rerun(drafts[1].id)
    assert pixel_hash(draft_again.image) == pixel_hash(drafts[1].image)


def test_refine_survives_a_restart(studio, tiny_recipe, tmp_path_factory):
    from atelier.studio import Studio

    draft = studio.draft(tiny_recipe(seed=99), 1)[0]
    expected = studio.refine(draft.id)
    reopened = Studio(studio.home, device="cpu")  # fresh models, fresh gallery connection
    try:
        again = reopened.refine(draft.id)
    finally:
        reopened.close()
    assert pixel_hash(again.image) == pixel_hash(expected.image)


def test_rerun_refuses_weights_that_changed(studio, tiny_recipe):
    saved = studio.draft(tiny_recipe(), 1)[0]
    generation = studio.gallery.get(saved.id)
    tampered = generation.recipe.replace(model=ModelRef("tiny", sha256="f" * 64))
    with pytest.raises(ValueError, match="now has sha256"):
        studio.engine.render(tampered)


def test_refine_needs_a_draft_with_its_latent(studio, tiny_recipe):
    draft = studio.draft(tiny_recipe(), 1)[0]
    refined = studio.refine(draft.id)
    with pytest.raises(ValueError, match="not a draft"):
        studio.refine(refined.id)
    draft.latent.unlink()
    with pytest.raises(ValueError, match="lost its kept latent"):
        studio.refine(draft.id)


def test_a_refined_edit_still_reruns_after_its_draft_is_deleted(studio, tiny_recipe):
    from atelier.edit_inputs import png_bytes, with_inputs

    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    recipe, inputs = with_inputs(tiny_recipe(mode="img2img", strength=0.6, seed=11), png_bytes(source))
    draft = studio.draft(recipe, 1, inputs=inputs)[0]
    refined = studio.refine(draft.id)
    studio.gallery.delete(draft.id)
    assert studio.gallery.read_file(recipe.source_image_sha256)  # still referenced by the refined entry
    rerun = studio.rerun(refined.id)
    assert pixel_hash(rerun.image) == pixel_hash(refined.image)


def test_a_refine_whose_draft_is_deleted_meanwhile_is_kept(studio, tiny_recipe):
    draft = studio.draft(tiny_recipe(seed=5), 1)[0]
    deleted = []

    def delete_the_draft(info):
        if not deleted:
            deleted.append(studio.gallery.delete(draft.id))

    refined = studio.refine(draft.id, on_step=delete_the_draft)
    entry = studio.gallery.get(refined.id)
    assert deleted and entry.parent_id is None and entry.image_path.exists()


def test_rerender_without_a_refine_stage_is_not_called_refined(studio, tiny_recipe):
    draft = studio.draft(tiny_recipe(switch=1.0, refine=None), 1)[0]
    assert studio.gallery.get(studio.rerender(draft.id, 12).id).kind == "txt2img"
