"""Search inputs on both sides of their bounds: dates with offsets and date-only values (also under a
non-UTC local time zone), ids and cursors up to SQLite's integer range, tag length and count caps, the
batch filter, and filters of the wrong type — each refused with a message that names it."""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from storage_checks import make_png, make_recipe, set_created_at

from storage.search import (
    MAX_ID,
    as_utc,
    check_id,
    check_kind,
    check_limit,
    decode_cursor,
    filter_conditions,
    fts_query,
    is_fts_error,
    normalise_tags,
)

pytestmark = pytest.mark.both_databases  # each test runs on SQLite and on PostgreSQL

NOON = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["UTC", "Pacific/Auckland", "America/Los_Angeles"])
def local_zone(request, monkeypatch):
    """The machine's local time zone: results must not depend on it."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-03-10T12:00", NOON),  # naive: UTC
        ("2025-03-10T12:00Z", NOON),
        ("2025-03-10T14:00+02:00", NOON),
        ("2025-03-10T07:00:00-05:00", NOON),
        (" 2025-03-10 12:00:00 ", NOON),
        ("2025-03-10", datetime(2025, 3, 10, tzinfo=UTC)),
        (date(2025, 3, 10), datetime(2025, 3, 10, tzinfo=UTC)),
        (datetime(2025, 3, 10, 12, 0), NOON),
        (datetime(2025, 3, 10, 21, 0, tzinfo=timezone(timedelta(hours=9))), NOON),
    ],
)
def test_dates_are_read_as_utc_whatever_the_local_zone(local_zone, value, expected):
    got = as_utc("since", value)
    assert got == expected and got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value", ["last tuesday", "2025-13-01", "", "2025-03-10T12:00z", 20250310, 1.5, ["2025-03-10"], True]
)
def test_unreadable_dates_name_the_filter(value):
    with pytest.raises(ValueError, match=r"^until: must be"):
        as_utc("until", value)


@pytest.fixture()
def dated(gallery, home):
    """Three rows created at 10:00, 12:00 and 14:00 UTC on 2025-03-10, with batch ids a, a, b."""
    saved = [
        gallery.save(make_recipe(seed=n), "draft", make_png(n), batch_id=batch)
        for n, batch in enumerate(("a", "a", "b"))
    ]
    for hours, g in zip((10, 12, 14), saved, strict=True):
        set_created_at(gallery, g.id, datetime(2025, 3, 10, hours, tzinfo=UTC))
    return [g.id for g in saved]


def test_since_and_until_with_offsets_select_the_same_instants(gallery, dated, local_zone):
    ids = lambda page: [g.id for g in page.items]  # noqa: E731
    assert ids(gallery.list(since="2025-03-10T13:00+01:00")) == dated[1:][::-1]  # 12:00 UTC is inclusive
    assert ids(gallery.list(since="2025-03-10T14:00+01:00")) == [dated[2]]
    assert ids(gallery.list(until="2025-03-10T08:00-04:00")) == [dated[0]]  # 12:00 UTC is exclusive
    assert ids(gallery.list(since=date(2025, 3, 10), until=date(2025, 3, 11))) == dated[::-1]
    assert ids(gallery.list(until=date(2025, 3, 10))) == []


def test_parent_filter_returns_exactly_its_children(gallery, dated):
    child = gallery.save(make_recipe(seed=5), "refined", make_png(5), parent_id=dated[0])
    assert [g.id for g in gallery.list(parent_id=dated[0]).items] == [child.id]
    assert gallery.list(parent_id=dated[1]).items == ()


def test_batch_filter_returns_exactly_its_batch(gallery, dated):
    assert [g.id for g in gallery.list(batch_id="a").items] == dated[:2][::-1]
    assert [g.id for g in gallery.list(batch_id="b").items] == [dated[2]]
    assert gallery.list(batch_id="c").items == ()
    for bad in ("", "  ", 7):
        with pytest.raises(ValueError, match="batch_id: must be a non-empty string"):
            gallery.list(batch_id=bad)


def test_wrong_types_in_filters_are_refused_in_words(gallery):
    cases = {
        "model": ("", "model: must be a non-empty string"),
        "lora": (["ink"], "lora: must be a non-empty string"),
        "tag": (3, "tag: must be a non-empty string"),
        "favourite": ("yes", "favourite: must be true or false"),
        "kind": (["draft", "sketch"], "kind: must be one of"),
        "parent_id": ("7", "parent_id: must be a positive integer"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            gallery.list(**{name: value})
    with pytest.raises(ValueError, match=r"^search: the query must be text \(got bytes\)$"):
        fts_query(b"fox")


@pytest.mark.parametrize(("value", "ok"), [(1, True), (MAX_ID, True), (0, False), (MAX_ID + 1, False), (-3, False)])
def test_ids_are_bounded_by_the_id_columns_integer_range(gallery, value, ok):
    assert MAX_ID == 2**31 - 1  # INTEGER on PostgreSQL
    if ok:
        assert check_id(value) == value
        assert gallery.list(parent_id=value).items == ()
    else:
        with pytest.raises(ValueError, match="must be a positive integer generation id"):
            check_id(value)


@pytest.mark.parametrize("cursor", ["0", "-1", "abc", "", str(2**31), str(2**63), "1e3", " 5"])
def test_bad_cursors_are_refused(cursor):
    with pytest.raises(ValueError, match="after: must be a next_cursor"):
        decode_cursor(cursor)


def test_cursor_limits_are_accepted(gallery):
    assert decode_cursor("1") == 1 and decode_cursor(str(MAX_ID)) == MAX_ID
    gallery.save(make_recipe(seed=1), "draft", make_png(1))
    assert len(gallery.list(after=str(MAX_ID)).items) == 1


def test_tag_length_and_count_caps_on_both_sides(gallery):
    assert normalise_tags(["x" * 64]) == ("x" * 64,)
    assert normalise_tags([" a ", "a", "b"]) == ("a", "b")
    assert len(normalise_tags([f"t{i}" for i in range(64)])) == 64
    assert len(normalise_tags([f"t{i % 64}" for i in range(200)])) == 64  # duplicates are not counted
    with pytest.raises(ValueError, match="1 to 64 characters"):
        normalise_tags(["x" * 65])
    with pytest.raises(ValueError, match=r"at most 64 tags per generation \(got 65\)"):
        normalise_tags([f"t{i}" for i in range(65)])
    for bad in ("", "   ", "tab\there", None, 5):
        with pytest.raises(ValueError, match="each tag must be printable text"):
            normalise_tags([bad])
    with pytest.raises(ValueError, match="^tags: must be a list of strings, not one string$"):
        normalise_tags("night")
    g = gallery.save(make_recipe(seed=2), "draft", make_png(2))
    assert gallery.set_tags(g.id, ["y" * 64]).tags == ("y" * 64,)


def test_local_zone_fixture_really_changes_the_zone(local_zone):
    assert os.environ["TZ"] == local_zone
    if local_zone != "UTC":
        assert time.localtime(0).tm_gmtoff != 0


@pytest.mark.parametrize(
    ("message", "is_query_error"),
    [
        ('fts5: syntax error near "*"', True),
        ("no such column: colour", True),
        ("unterminated string", True),
        ("unknown special query: x", True),
        ("malformed MATCH expression: [fox AND]", True),
        ("database is locked", False),
        ("disk I/O error", False),
    ],
)
def test_only_full_text_query_errors_are_the_users_query(message, is_query_error):
    assert is_fts_error(message) is is_query_error


def test_filter_errors_name_the_filter():
    with pytest.raises(ValueError) as refused:
        filter_conditions({"size": 1, "colour": "red", "model": "base"})
    assert str(refused.value) == (
        "search: unknown filter(s) colour, size; allowed: model, lora, kind, since, until, favourite, tag, batch_id, "
        "parent_id"
    )
    for name in ("since", "until"):
        with pytest.raises(ValueError, match=rf"^{name}: must be an ISO date or time such as 2025-01-31 "):
            filter_conditions({name: "soon"})
    with pytest.raises(ValueError, match=r"^kind: must be one of .* \(got 'sketch'\)$"):
        filter_conditions({"kind": "sketch"})
    assert len(filter_conditions({"model": "base", "since": None, "kind": ("draft", "refined")})) == 2


def test_limits_kinds_and_ids_on_both_sides_with_their_default_names():
    assert check_limit(1) == 1 and check_limit(1000) == 1000
    for bad in (0, 1001, True, 5.0, "5"):
        with pytest.raises(ValueError, match=rf"^limit: must be an integer from 1 to 1000 \(got {bad!r}\)$"):
            check_limit(bad)
    assert check_kind("draft") == "draft"
    with pytest.raises(ValueError) as refused:
        check_kind("sketch")
    assert (
        str(refused.value)
        == "kind: must be one of draft, refined, txt2img, img2img, controlnet, imported (got 'sketch')"
    )
    with pytest.raises(
        ValueError, match=r"^id: must be a positive integer generation id up to 2147483647 \(got '7'\)$"
    ):
        check_id("7")
