"""Dynamic prompts ({a|b}, __wildcard__): drawn per draft's seed, recorded as template + resolved prompt,
searchable by either, re-run without the wildcard file; the CLI form and its errors."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from atelier.cli import main
from atelier.commands import generate
from atelier.requests import GenerationRequest, ModelChoice, plan_drafts, wildcards_folder
from pipelines.recipe import Recipe

TINY = ModelChoice(base="tiny", refiner="tiny")
SMALL = dict(steps=4, width=64, height=64)
MODELS = ["--model", "tiny", "--refiner", "tiny"]


def pixel_hash(path):
    with Image.open(path) as image:
        return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def plan(prompt: str, *, wildcards=None, **changes):
    request = GenerationRequest(prompt=prompt, **{"seed": 5, "count": 4, **SMALL, **changes})
    return plan_drafts(request, TINY, wildcards=wildcards)


@pytest.fixture()
def wildcards(tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "weather.txt").write_text("foggy\n# a comment, never drawn\nstormy\nsunny\n")
    (folder / "animal.txt").write_text("heron\notter\n")
    return folder


# -- the request layer (no model) ------------------------------------------------------------------


def test_the_same_seed_gives_the_same_resolved_prompts(wildcards):
    template = "a {red|green|blue} __animal__ on a __weather__ day, {oil|ink}"
    first = plan(template, wildcards=wildcards, count=8)
    again = plan(template, wildcards=wildcards, count=8)
    other = plan(template, wildcards=wildcards, count=8, seed=6)
    assert first.labels == again.labels and [r.prompt for r in first.each] == list(first.labels)
    assert other.labels[:-1] == first.labels[1:]  # draft i is drawn with its own seed, seed + i
    assert len(set(first.labels)) > 1
    assert all("{" not in p and "__" not in p and "#" not in p for p in first.labels)


def test_two_alternatives_over_four_drafts_give_both():
    assert set(plan("a {cat|dog}", seed=5).labels) == {"a cat", "a dog"}
    drawn = Counter(p for seed in range(0, 400, 4) for p in plan("a {cat|dog}", seed=seed).labels)
    assert set(drawn) == {"a cat", "a dog"} and min(drawn.values()) > 150  # 400 draws, both about half


def test_combinatorial_gives_every_combination_in_order_at_most_count(wildcards):
    every = plan("{a|b} __animal__", wildcards=wildcards, combinatorial=True, count=16)
    assert every.labels == ("a heron", "a otter", "b heron", "b otter")
    assert [r.seed for r in every.each] == [5, 6, 7, 8]
    assert plan("{a|b} __animal__", wildcards=wildcards, combinatorial=True, count=3).labels == every.labels[:3]


def test_each_recipe_stores_the_template_and_its_resolved_prompt(wildcards):
    template = "a __animal__ in {snow|rain}"
    made = plan(template, wildcards=wildcards)
    assert made.count == 4 and made.sweep is None
    for i, recipe in enumerate(made.each):
        assert recipe.prompt_template == template and recipe.prompt == made.labels[i]
        assert recipe.seed == 5 + i and recipe.batch_seeds == () and recipe.stage == "draft"
        assert Recipe.from_json(recipe.to_json()) == recipe
    plain = plan("a heron in snow")
    assert plain.each == () and plain.count == 4 and plain.recipe.prompt_template is None


def test_loras_and_syntax_follow_each_resolved_prompt():
    made = plan("a fox {<lora:ink:0.5>|(in snow:1.3)}", seed=0, count=8)
    for recipe in made.each:
        if "lora" in recipe.prompt:
            assert [(x.name, x.weight) for x in recipe.loras] == [("ink", 0.5)]
        else:
            assert recipe.loras == () and recipe.prompt_syntax == "a1111"  # auto: the A1111 attention syntax


def test_old_recipes_load_without_a_template(tiny_recipe):
    data = tiny_recipe().to_dict()
    del data["prompt_template"]
    assert Recipe.from_dict(data).prompt_template is None and Recipe.from_dict(data) == tiny_recipe()


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("a __nowhere__ fox", "prompt: no wildcard __nowhere__"),
        ("a {cat|dog", "prompt: 'a {cat|dog' is not a valid dynamic prompt"),
        ("{|}", "prompt: '{|}' gives an empty prompt"),
    ],
)
def test_bad_templates_name_the_prompt(wildcards, prompt, message):
    with pytest.raises(ValueError, match="^" + message.replace("{", r"\{").replace("|", r"\|")):
        plan(prompt, wildcards=wildcards)
    with pytest.raises(ValueError, match="^prompt_template:"):
        Recipe.from_dict({**plan("a cat").recipe.to_dict(), "prompt_template": ""})


# -- through the Studio: stored, searched, re-run ----------------------------------------------------


@pytest.fixture(scope="module")
def studio(make_tiny_home):
    from atelier.studio import Studio

    studio = Studio(make_tiny_home(name="dynamic-home"), device="cpu")
    yield studio
    studio.close()


def test_drafts_are_searchable_by_template_and_resolved_prompt_and_rerun_without_the_wildcard(studio):
    folder = wildcards_folder(studio.home)
    folder.mkdir(exist_ok=True)
    (folder / "marsh.txt").write_text("bittern\n")
    made = plan("a __marsh__ by the {estuary|lagoon}", wildcards=folder, seed=11, count=2)
    saved = studio.draft_each(list(made.each))
    stored = [studio.get(s.id) for s in saved]
    assert [g.recipe.prompt for g in stored] == list(made.labels)
    assert all(g.recipe.prompt_template == "a __marsh__ by the {estuary|lagoon}" for g in stored)
    assert len({g.batch_id for g in stored}) == 1 and stored[0].batch_id  # one gallery batch
    ids = {s.id for s in saved}
    assert {g.id for g in studio.search("marsh").items} == ids  # the wildcard's name: only in the template
    assert {g.id for g in studio.search("bittern").items} == ids  # its option: only in the resolved prompts
    unused = ({"estuary", "lagoon"} - {p.split()[-1] for p in made.labels}) or {"estuary"}
    assert ids <= {g.id for g in studio.search(unused.pop()).items}  # an alternative that was not drawn
    (folder / "marsh.txt").unlink()
    with pytest.raises(ValueError, match="no wildcard __marsh__"):
        plan("a __marsh__ by the {estuary|lagoon}", wildcards=folder, seed=11, count=2)
    again = studio.rerun(saved[1].id)  # the recipe holds the resolved prompt: no wildcard file needed
    assert pixel_hash(again.image) == pixel_hash(saved[1].image)
    assert again.recipe.prompt == saved[1].recipe.prompt and again.recipe.prompt_template == made.recipe.prompt_template


def test_cli_draft_resolves_the_prompt_and_prints_each(studio, capsys):
    argv = ["draft", *MODELS, "--prompt", "a {kite|comet} at dusk", "--count", "2", "--seed", "3"]
    size = ["--steps", "4", "--width", "64", "--height", "64", "--home", str(studio.home), "--json"]
    code = main([*argv, *size, "--combinatorial"])
    out, err = capsys.readouterr()
    assert code == 0, err
    drafts = json.loads(out)["drafts"]
    assert [d["label"] for d in drafts] == ["a kite at dusk", "a comet at dusk"]
    assert [d["seed"] for d in drafts] == [3, 4]
    assert [studio.get(d["id"]).recipe.prompt_template for d in drafts] == ["a {kite|comet} at dusk"] * 2


def test_cli_refuses_a_missing_wildcard_before_a_studio_opens(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(generate, "open_studio", lambda args: pytest.fail("a studio was opened"))
    code = main(["draft", *MODELS, "--prompt", "a __ghost__", "--home", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("atelier draft: prompt: no wildcard __ghost__") and str(tmp_path / "wildcards") in err
