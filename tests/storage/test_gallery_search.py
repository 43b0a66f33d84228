"""Full-text search, filters that combine, keyset pagination, and the LIKE fallback."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from storage_checks import make_png, make_recipe, set_created_at

from pipelines.recipe import LoraRef, ModelRef

pytestmark = pytest.mark.both_databases  # each test runs on SQLite and on PostgreSQL


PROMPTS = [
    ("a red fox in the snow", "blurry"),
    ("portrait of an old fisherman, dramatic light", "lowres, watermark"),
    ("a fox and a crow, watercolor", "photo"),
    ("city street at night, neon rain", "blurry, people"),
    ("crème brûlée on a marble table", ""),
]


@pytest.fixture()
def filled(gallery, home):
    """30 generations over every combination of model, kind, LoRA, favourite and date."""
    models, kinds, loras = ("base", "juggernaut"), ("draft", "refined", "img2img"), (None, "ink")
    saved = []
    for n, (model, kind, lora) in enumerate(itertools.product(models, kinds, loras)):
        for k in range(2 + n % 2):
            prompt, negative = PROMPTS[(n + k) % len(PROMPTS)]
            r = make_recipe(
                model=ModelRef(model),
                prompt=prompt,
                negative_prompt=negative,
                seed=n * 10 + k,
                loras=(LoraRef(lora, weight=0.5),) if lora else (),
            )
            if kind == "img2img":
                r = r.replace(mode="img2img", strength=0.5)
            g = gallery.save(r, kind, make_png(len(saved)))
            if len(saved) % 4 == 0:
                g = gallery.set_favourite(g.id, True)
            saved.append(g)
    # Spread creation times over 30 days (newest = highest id) to test the date filters.
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for i, g in enumerate(saved):
        set_created_at(gallery, g.id, start + timedelta(days=i))
    return {g.id: g for g in saved}


def _ids(page):
    return [g.id for g in page.items]


def _expected(filled, keep):
    return sorted((i for i, g in filled.items() if keep(g)), reverse=True)


def test_fts_finds_a_word_of_the_prompt(gallery, filled):
    found = _ids(gallery.search("fisherman", limit=100))
    assert found == _expected(filled, lambda g: "fisherman" in g.recipe.prompt) and found
    assert _ids(gallery.search("fox", limit=100)) == _expected(filled, lambda g: "fox" in g.recipe.prompt)
    assert gallery.search("unicorn").items == ()


def test_fts_query_forms(gallery, filled):
    def has(g, *words):
        text = f"{g.recipe.prompt} {g.recipe.negative_prompt}"
        return all(w in text for w in words)

    assert _ids(gallery.search("fox, watercolor", limit=100)) == _expected(
        filled, lambda g: has(g, "fox", "watercolor")
    )
    assert _ids(gallery.search("watermark", limit=100)) == _expected(filled, lambda g: has(g, "watermark"))
    assert _ids(gallery.search("fish*", limit=100)) == _expected(filled, lambda g: has(g, "fisherman"))
    assert _ids(gallery.search("fox OR neon", limit=100)) == _expected(
        filled, lambda g: has(g, "fox") or has(g, "neon")
    )
    assert _ids(gallery.search('"red fox"', limit=100)) == _expected(filled, lambda g: has(g, "red fox"))
    assert _ids(gallery.search("prompt: blurry", limit=100)) == []  # column filter: only in negatives
    assert _ids(gallery.search("creme brulee", limit=100)) == _expected(filled, lambda g: has(g, "crème"))


@pytest.mark.parametrize("query", ['"unterminated', "fox AND", "colour: red", "(fox", "*", "* fox"])
def test_bad_fts_syntax_is_a_value_error(gallery, filled, query):
    with pytest.raises(ValueError, match="not a valid full-text query"):
        gallery.search(query)


def test_queries_without_words_are_refused(gallery):
    with pytest.raises(ValueError, match="no word to search for"):
        gallery.search(" , ; ")
    with pytest.raises(ValueError, match="must be text"):
        gallery.search(5)


def test_filters_combine(gallery, filled):
    ink = lambda g: any(lora.name == "ink" for lora in g.recipe.loras)  # noqa: E731
    cases = [
        (dict(model="juggernaut"), lambda g: g.recipe.model.name == "juggernaut"),
        (dict(kind="refined"), lambda g: g.kind == "refined"),
        (dict(kind=("draft", "img2img")), lambda g: g.kind in ("draft", "img2img")),
        (dict(lora="ink"), ink),
        (dict(favourite=True), lambda g: g.favourite),
        (dict(favourite=False, model="base"), lambda g: not g.favourite and g.recipe.model.name == "base"),
        (
            dict(model="base", kind="refined", lora="ink"),
            lambda g: g.recipe.model.name == "base" and g.kind == "refined" and ink(g),
        ),
    ]
    for filters, keep in cases:
        got = _ids(gallery.list(limit=100, **filters))
        assert got == _expected(filled, keep), filters
        assert got, filters
    assert gallery.list(lora="paper").items == ()  # a LoRA no generation used: not "any LoRA"
    fox = _ids(gallery.search("fox", limit=100, model="juggernaut", lora="ink"))
    assert fox == _expected(
        filled, lambda g: "fox" in g.recipe.prompt and g.recipe.model.name == "juggernaut" and ink(g)
    )


def test_date_range(gallery, filled):
    got = gallery.list(limit=100, since="2025-01-05", until=datetime(2025, 1, 9, tzinfo=UTC))
    assert len(got.items) == 4  # days 5, 6, 7, 8: since inclusive, until exclusive
    assert all(datetime(2025, 1, 5, tzinfo=UTC) <= g.created_at < datetime(2025, 1, 9, tzinfo=UTC) for g in got.items)
    with pytest.raises(ValueError, match="since: must be an ISO date"):
        gallery.list(since="last tuesday")


def test_tag_filter(gallery, filled):
    ids = sorted(filled)[:3]
    for i in ids:
        gallery.set_tags(i, ["keep", f"n{i}"])
    assert _ids(gallery.list(tag="keep")) == ids[::-1]
    assert _ids(gallery.list(tag=f"n{ids[0]}")) == [ids[0]]
    assert gallery.tags_in_use() == sorted({"keep", *(f"n{i}" for i in ids)})  # each once, sorted
    for i in ids:
        gallery.set_tags(i, [])
    assert gallery.tags_in_use() == []


def test_bad_filters(gallery):
    with pytest.raises(ValueError, match="kind: must be one of"):
        gallery.list(kind="sketch")
    with pytest.raises(ValueError, match="unknown filter"):
        gallery.list(colour="red")
    with pytest.raises(ValueError, match="limit: must be an integer from 1 to 1000"):
        gallery.list(limit=0)
    with pytest.raises(ValueError, match="after: must be a next_cursor"):
        gallery.list(after="yesterday")


@pytest.mark.parametrize("query", [None, "fox", "a"])
def test_keyset_pages_cover_everything_once(gallery, filled, query):
    everything = _ids(gallery.search(query, limit=1000))
    pages, cursor = [], None
    while True:
        page = gallery.search(query, limit=4, after=cursor)
        pages.append(_ids(page))
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [i for p in pages for i in p] == everything
    assert all(len(p) == 4 for p in pages[:-1]) and 1 <= len(pages[-1]) <= 4


def test_pages_do_not_shift_when_new_rows_arrive(gallery, filled, recipe):
    first = gallery.list(limit=5)
    gallery.save(recipe(prompt="a new fox"), "draft", make_png(999))
    second = gallery.list(limit=5, after=first.next_cursor)
    assert _ids(second) == sorted(filled, reverse=True)[5:10]


def _like(gallery, query: str) -> list[int]:
    """The ids `query` finds with the LIKE fallback (what a dialect without FTS5 or PostgreSQL's text search gets)."""
    kept = gallery._text_search
    gallery._text_search = "like"
    try:
        return _ids(gallery.search(query, limit=100))
    finally:
        gallery._text_search = kept


def test_like_fallback_matches_fts_on_plain_words(gallery, filled):
    for query in ("fox", "fox watercolor", "blurry", "fisherman light"):
        fts = _ids(gallery.search(query, limit=100))
        assert _like(gallery, query) == fts and fts, query


def test_like_fallback_reads_words_case_insensitively_in_every_text_column(gallery, filled):
    in_prompt = lambda *words: lambda g: all(w in g.recipe.prompt for w in words)  # noqa: E731
    assert _like(gallery, "FOX") == _expected(filled, in_prompt("fox")) != []
    # FTS syntax characters and operators are dropped (no row with "marble" has "and", "or", "not" or "near")
    assert _like(gallery, '"marble" AND (table*) OR NEAR NOT') == _expected(filled, in_prompt("marble")) != []
    assert _like(gallery, "watermark") == _expected(filled, lambda g: "watermark" in g.recipe.negative_prompt) != []
    kite = gallery.save(make_recipe(prompt="a red kite", prompt_template="a {red|blue} kite"), "draft", make_png(99))
    assert _like(gallery, "blue; kite") == [kite.id]  # the blue is only in the template
    for query in ('"" AND *', " , ; "):
        with pytest.raises(ValueError) as refused:
            _like(gallery, query)
        assert str(refused.value) == f"search: {query!r} contains no word to search for"


@pytest.mark.parametrize(
    ("query", "hint"),
    [
        ("lighthous", "`lighthous*`"),
        ("old lighthous", "`lighthous*`"),
        ("lighthous*", None),  # already a prefix
        ('"lighthous"', None),  # a phrase: matched whole by choice
        ("lighthouse AND", None),  # an operator ends it: no word to extend
    ],
)
def test_nothing_found_hints_at_a_prefix_that_finds_it(gallery, query, hint):
    """The Gallery's "Nothing found." names `word*` when the last word could start a longer one; the query it
    suggests finds the entry (on both databases)."""
    from webui.gallery_tab import nothing_found

    saved = gallery.save(make_recipe(prompt="an old lighthouse at dusk"), "draft", make_png(7))
    text = nothing_found(query)
    if hint is None:
        assert text == "Nothing found."
        return
    assert hint in text
    assert not gallery.search("lighthous", limit=5).items  # whole words only: the hint is needed
    suggested = query.rsplit(" ", 1)[0] + " lighthous*" if " " in query else "lighthous*"
    assert [g.id for g in gallery.search(suggested, limit=5).items] == [saved.id]
