"""The gallery CLI subcommands, driven through argparse as atelier/cli.py wires them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from storage_checks import make_png, sha

from atelier.commands.common import run_command
from atelier.commands.gallery import register
from pipelines.recipe import Recipe
from storage.gallery import Gallery


@pytest.fixture()
def run(home, capsys):
    parser = argparse.ArgumentParser(prog="atelier")
    parser.add_argument("--home", type=Path, default=home)
    register(parser.add_subparsers(dest="command", required=True))

    def call(*argv):
        args = parser.parse_args(list(argv))
        code = run_command(args)  # the one error → exit status mapping of atelier.cli.main
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.fixture()
def two(home, recipe):
    with Gallery.open(home) as gallery:
        a = gallery.save(recipe(prompt="a lighthouse in fog"), "draft", make_png(1))
        b = gallery.save(recipe(prompt="a fox in snow", seed=9), "refined", make_png(2), parent_id=a.id)
    return a, b


def test_list_and_search(run, two):
    a, b = two
    code, out, _ = run("list", "--json")
    assert code == 0 and [i["id"] for i in json.loads(out)["items"]] == [b.id, a.id]
    code, out, _ = run("list", "--search", "lighthouse", "--json")
    assert [i["id"] for i in json.loads(out)["items"]] == [a.id]
    code, out, _ = run("list", "--limit", "1", "--json")
    page = json.loads(out)
    assert [i["id"] for i in page["items"]] == [b.id] and page["next_cursor"]
    code, out, _ = run("list", "--limit", "1", "--after", page["next_cursor"], "--json")
    assert [i["id"] for i in json.loads(out)["items"]] == [a.id]
    code, out, _ = run("list")
    assert "a fox in snow" in out and "refined" in out
    code, _, err = run("list", "--search", '"open')
    assert code == 2 and "not a valid full-text query" in err


def test_show(run, two):
    a, b = two
    code, out, _ = run("show", str(b.id), "--json")
    data = json.loads(out)
    assert code == 0 and data["parent_id"] == a.id and Recipe.from_dict(data["recipe"]) == b.recipe
    code, _, err = run("show", "99")
    assert code == 2 and "no generation with id 99" in err


def test_export_copies_the_png_unchanged_with_its_recipe(run, two, tmp_path):
    _, b = two
    code, out, _ = run("export", str(b.id), str(tmp_path / "out"), "--json")
    paths = json.loads(out)
    assert code == 0
    assert sha(Path(paths["image"]).read_bytes()) == b.image_sha256
    assert Recipe.from_json(Path(paths["recipe"]).read_text()) == b.recipe


def test_favourite_tag_delete(run, two, home):
    a, b = two
    assert run("favourite", str(a.id))[0] == 0
    code, out, _ = run("list", "--favourite", "--json")
    assert [i["id"] for i in json.loads(out)["items"]] == [a.id]
    run("favourite", str(a.id), "--off")
    run("tag", str(b.id), "night", "snow")
    run("tag", str(b.id), "fox")
    code, out, _ = run("tag", str(b.id), "--remove", "snow", "--json")
    assert json.loads(out)["tags"] == ["night", "fox"]
    code, out, _ = run("list", "--tag", "fox", "--json")
    assert [i["id"] for i in json.loads(out)["items"]] == [b.id]
    code, out, _ = run("delete", str(a.id), "--json")
    assert code == 0 and a.image_sha256 in json.loads(out)["removed_files"]
    with Gallery.open(home) as gallery:
        assert gallery.get(b.id).parent_id is None and not gallery.get(b.id).favourite
    assert run("delete", str(a.id))[0] == 2
