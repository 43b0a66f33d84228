"""Save, get, files, delete, lineage, favourites and tags."""

from __future__ import annotations

import pytest
from PIL import Image
from storage_checks import (
    consistency_problems,
    control_recipe,
    database_url,
    files_on_disk,
    make_png,
    query_rows,
    sha,
)

from storage.gallery import KINDS, Gallery, NotFoundError

pytestmark = pytest.mark.both_databases  # each test runs on SQLite and on PostgreSQL


def test_save_and_get_round_trip(gallery, home, recipe, png, latent):
    image, source = png(1), png(2)
    r = recipe(mode="img2img", strength=0.6, source_image_sha256=sha(source), seed=42, prompt="red fox")
    saved = gallery.save(r, "img2img", image, batch_id="b1", latent=latent(3), inputs={"source": source})
    got = gallery.get(saved.id)
    assert got == saved
    assert got.recipe == r and got.kind == "img2img" and got.batch_id == "b1" and got.parent_id is None
    assert got.image_sha256 == sha(image) and got.image_path.read_bytes() == image
    assert got.latent_path.read_bytes() == latent(3) and got.latent_path.suffix == ".safetensors"
    assert got.inputs == (("source", sha(source)),)
    assert gallery.read_file(sha(source)) == source
    with Image.open(got.thumbnail_path) as thumb:
        assert thumb.format == "WEBP" and thumb.size == (32, 24)
    assert got.image_path.relative_to(home / "files").as_posix() == f"{sha(image)[:2]}/{sha(image)[2:]}.png"
    (row,) = query_rows(gallery, "SELECT recipe_json, prompt, seed, model_name, strength, width, kind FROM generations")
    assert row == (r.to_json(), "red fox", 42, "tiny", 0.6, 64, "img2img")  # recipe JSON stored unchanged
    assert consistency_problems(home, database_url(gallery)) == []


def test_thumbnail_is_at_most_256_pixels(gallery, recipe):
    saved = gallery.save(recipe(), "txt2img", make_png(5, size=(640, 320)))
    with Image.open(saved.thumbnail_path) as thumb:
        assert thumb.size == (256, 128)


def test_controlnet_inputs_and_loras(gallery, home):
    control, map_ = make_png(10), make_png(11)
    r = control_recipe(control, map_)
    saved = gallery.save(r, "controlnet", make_png(12), inputs={"control:0": control, "map": map_})
    assert dict(saved.inputs) == {"control:0": sha(control), "map:0": sha(map_)}
    assert query_rows(gallery, "SELECT name, weight FROM generation_loras") == [("ink", 0.7)]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(kind="sketch"), "kind: must be one of"),
        (dict(image_png=b"GIF89a"), "image_png: must be the bytes of a PNG"),
        (dict(image_png=b"\x89PNG\r\n\x1a\nbroken"), "not a readable PNG"),
        (dict(latent=b"not safetensors"), "latent: must be the bytes of a .safetensors"),
        (dict(inputs={"depth": b"x"}), "unknown role 'depth'"),
        (dict(inputs={"control:3": b"x"}), "recipe has 0 unit"),
        (dict(parent_id=999), "parent_id: no generation with id 999"),
        (dict(parent_id=0), "parent_id: must be a positive integer"),
        (dict(batch_id=""), "batch_id"),
    ],
)
def test_bad_input_is_refused_and_leaves_nothing(gallery, home, recipe, change, message):
    args = dict(recipe=recipe(), kind="draft", image_png=make_png(1))
    args.update(change)
    with pytest.raises(ValueError, match=message):
        gallery.save(args.pop("recipe"), args.pop("kind"), args.pop("image_png"), **args)
    assert gallery.list().items == () and files_on_disk(home) == set()


def test_input_hash_must_match_the_recipe(gallery, home, recipe):
    r = recipe(mode="img2img", strength=0.5, source_image_sha256=sha(make_png(2)))
    with pytest.raises(ValueError, match="does not match the one the recipe records"):
        gallery.save(r, "img2img", make_png(1), inputs={"source": make_png(3)})
    assert files_on_disk(home) == set()


def test_get_missing_and_bad_ids(gallery):
    with pytest.raises(NotFoundError, match="no generation with id 7"):
        gallery.get(7)
    assert issubclass(NotFoundError, ValueError)
    for bad in (0, -1, "3", True, None):
        with pytest.raises(ValueError, match="id: must be a positive integer"):
            gallery.get(bad)


def test_read_file_missing_or_damaged(gallery, recipe):
    saved = gallery.save(recipe(), "draft", make_png(1))
    with pytest.raises(NotFoundError, match="no file with sha256"):
        gallery.read_file("0" * 64)
    saved.image_path.write_bytes(b"changed")
    with pytest.raises(OSError, match="damaged"):
        gallery.read_file(saved.image_sha256)
    saved.image_path.unlink()
    with pytest.raises(FileNotFoundError, match="missing from disk"):
        gallery.read_file(saved.image_sha256)


def test_delete_keeps_shared_files_until_the_last_user_goes(gallery, home, recipe, latent):
    a = gallery.save(recipe(seed=1), "draft", make_png(1), latent=latent(1))
    b = gallery.save(recipe(seed=2), "draft", make_png(1))  # same PNG bytes: same files
    assert a.image_path == b.image_path
    removed = gallery.delete(a.id)
    assert removed == (sha(latent(1)),)  # only the latent was a's alone
    assert b.image_path.exists() and b.thumbnail_path.exists() and not a.latent_path.exists()
    thumb_sha = sha(b.thumbnail_path.read_bytes())
    assert gallery.delete(b.id) == tuple(sorted((b.image_sha256, thumb_sha)))
    assert files_on_disk(home) == set() and gallery.list().items == ()
    with pytest.raises(NotFoundError):
        gallery.delete(b.id)
    assert consistency_problems(home, database_url(gallery)) == []


def test_deleting_a_draft_keeps_its_refined_child(gallery, home, recipe, latent):
    draft = gallery.save(recipe(stage="draft"), "draft", make_png(1), latent=latent(1), batch_id="b")
    refined = gallery.save(recipe(), "refined", make_png(2), parent_id=draft.id)
    gallery.delete(draft.id)
    child = gallery.get(refined.id)
    assert child.parent_id is None and child.image_path.read_bytes() == make_png(2)
    assert not draft.latent_path.exists() and not draft.image_path.exists()
    assert consistency_problems(home, database_url(gallery)) == []


def test_lineage_draft_refined_rerun(gallery, recipe):
    draft = gallery.save(recipe(stage="draft"), "draft", make_png(1))
    sibling = gallery.save(recipe(stage="draft", seed=2), "draft", make_png(2))
    refined = gallery.save(recipe(), "refined", make_png(3), parent_id=draft.id)
    rerun = gallery.save(recipe(), "refined", make_png(3), parent_id=refined.id)
    other = gallery.save(recipe(), "txt2img", make_png(4), parent_id=draft.id)
    assert [g.id for g in gallery.ancestors(rerun.id)] == [refined.id, draft.id]
    assert gallery.ancestors(draft.id) == []
    assert [g.id for g in gallery.children(draft.id)] == [refined.id, other.id]
    assert [g.id for g in gallery.children(refined.id)] == [rerun.id]
    assert gallery.children(sibling.id) == []
    assert [g.id for g in gallery.list(parent_id=draft.id).items] == [other.id, refined.id]
    with pytest.raises(NotFoundError):
        gallery.children(99)


def test_favourite_and_tags(gallery, recipe):
    g = gallery.save(recipe(), "txt2img", make_png(1))
    assert gallery.set_favourite(g.id, True).favourite is True
    assert gallery.get(g.id).favourite is True
    assert gallery.set_favourite(g.id, False).favourite is False
    assert gallery.set_tags(g.id, ["cats", " moody ", "cats", "blue"]).tags == ("cats", "moody", "blue")
    assert gallery.set_tags(g.id, ["blue"]).tags == ("blue",)
    for bad in ("cats", [""], ["x" * 65], [3]):
        with pytest.raises(ValueError, match="tags"):
            gallery.set_tags(g.id, bad)
    with pytest.raises(ValueError, match="favourite"):
        gallery.set_favourite(g.id, "yes")
    with pytest.raises(NotFoundError):
        gallery.set_tags(99, ["x"])


def test_kinds_are_the_documented_ones():
    assert KINDS == ("draft", "refined", "txt2img", "img2img", "controlnet", "imported")


def test_saves_survive_reopening(home, recipe):
    with Gallery.open(home) as gallery:
        ids = [gallery.save(recipe(seed=n), "draft", make_png(n)).id for n in range(3)]
    with Gallery.open(home) as gallery:
        assert [g.id for g in gallery.list().items] == ids[::-1]
        assert [g.recipe.seed for g in gallery.list().items] == [2, 1, 0]
