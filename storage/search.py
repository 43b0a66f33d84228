"""Search conditions for the gallery: full-text query, filters and the keyset cursor.

Full text uses SQLite FTS5 (table generations_fts, created by revision 0002; 0003 adds prompt_template).
A query made of plain words (commas and other punctuation allowed, as prompts are written) matches
rows containing every word, in prompt, negative or the dynamic prompt's template; a query using FTS5
syntax (double quotes, *, AND/OR/NOT/NEAR, parentheses, `prompt:` column filters) is passed through
as written. PostgreSQL reads the same queries with its own text search (storage/pg_search.py, served by the
GIN index of revision 0005). Other dialects fall back to case-insensitive LIKE on each word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import Integer, Select, and_, column, exists, or_, table, text
from sqlalchemy.sql.elements import ColumnElement

from storage.models import FTS_TABLE, KINDS, GenerationLoraRow, GenerationRow, GenerationTagRow

MAX_LIMIT = 1000
MAX_ID = 2**31 - 1  # the id column is INTEGER: 32 bits on PostgreSQL (larger values overflow the driver)
FILTERS = ("model", "lora", "kind", "since", "until", "favourite", "tag", "batch_id", "parent_id")
_FTS_SYNTAX = re.compile(r'["*():^+{}]|\b(AND|OR|NOT|NEAR)\b')
_WORD_SPLIT = re.compile(r"[\s,;]+")
FTS_HELP = (
    'use plain words, "quoted phrases", AND / OR / NOT, prefix* or prompt: / negative: / prompt_template: '
    "column filters"
)


def fts_query(query: str) -> str:
    """The FTS5 MATCH expression for a user's query (see the module docstring)."""
    if not isinstance(query, str):
        raise ValueError(f"search: the query must be text (got {type(query).__name__})")
    query = query.strip()
    if _FTS_SYNTAX.search(query):
        return query
    words = [w for w in _WORD_SPLIT.split(query) if re.search(r"\w", w)]
    if not words:
        raise ValueError(f"search: {query!r} contains no word to search for; {FTS_HELP}")
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


FTS = table(FTS_TABLE, column("rowid", Integer))


def searched(statement: Select, query: str, after: int | None) -> Select:
    """`statement` (over GenerationRow) restricted to full-text matches, newest first.

    Joined to the FTS table and ordered by its rowid, so SQLite walks the match list backwards and
    stops at the page's end instead of collecting every match of a common word and sorting them.
    """
    statement = statement.join(FTS, FTS.c.rowid == GenerationRow.id).where(
        text(f"{FTS_TABLE} MATCH :fts_query").bindparams(fts_query=fts_query(query))
    )
    if after is not None:
        statement = statement.where(FTS.c.rowid < after)
    return statement.order_by(FTS.c.rowid.desc())


def postgres_condition(query: str) -> ColumnElement[bool]:
    """The same query language on PostgreSQL's text search (storage.pg_search)."""
    from storage.pg_search import QueryError, pg_text_condition

    try:
        return pg_text_condition(fts_query(query))
    except QueryError as exc:
        raise ValueError(f"search: {query!r} is not a valid full-text query ({exc}); {FTS_HELP}") from None


def like_condition(query: str) -> ColumnElement[bool]:
    """Fallback without FTS5: every word appears in prompt, negative or template (case-insensitive)."""
    words = [re.sub(r'["*():^+{}]', "", w) for w in _WORD_SPLIT.split(query.strip())]
    words = [w for w in words if w and w not in ("AND", "OR", "NOT", "NEAR")]
    if not words:
        raise ValueError(f"search: {query!r} contains no word to search for")
    columns = (GenerationRow.prompt, GenerationRow.negative, GenerationRow.prompt_template)
    return and_(*(or_(*(c.ilike(f"%{w}%") for c in columns)) for w in words))


def filter_conditions(filters: dict[str, Any]) -> list[ColumnElement[bool]]:
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise ValueError(f"search: unknown filter(s) {', '.join(unknown)}; allowed: {', '.join(FILTERS)}")
    conditions: list[ColumnElement[bool]] = []
    f = {k: v for k, v in filters.items() if v is not None}
    if "model" in f:
        conditions.append(GenerationRow.model_name == _text("model", f["model"]))
    if "lora" in f:
        name = _text("lora", f["lora"])
        conditions.append(
            exists().where(GenerationLoraRow.generation_id == GenerationRow.id, GenerationLoraRow.name == name)
        )
    if "tag" in f:
        tag = _text("tag", f["tag"])
        conditions.append(
            exists().where(GenerationTagRow.generation_id == GenerationRow.id, GenerationTagRow.tag == tag)
        )
    if "kind" in f:
        kinds = (f["kind"],) if isinstance(f["kind"], str) else tuple(f["kind"])
        for kind in kinds:
            check_kind(kind, "kind")
        conditions.append(GenerationRow.kind.in_(kinds))
    if "since" in f:
        conditions.append(GenerationRow.created_at >= as_utc("since", f["since"]))
    if "until" in f:
        conditions.append(GenerationRow.created_at < as_utc("until", f["until"]))
    if "favourite" in f:
        if not isinstance(f["favourite"], bool):
            raise ValueError(f"favourite: must be true or false (got {f['favourite']!r})")
        conditions.append(GenerationRow.favourite.is_(f["favourite"]))
    if "batch_id" in f:
        conditions.append(GenerationRow.batch_id == _text("batch_id", f["batch_id"]))
    if "parent_id" in f:
        conditions.append(GenerationRow.parent_id == check_id(f["parent_id"], "parent_id"))
    return conditions


def check_kind(kind: Any, what: str = "kind") -> str:
    if kind not in KINDS:
        raise ValueError(f"{what}: must be one of {', '.join(KINDS)} (got {kind!r})")
    return kind


def check_id(value: Any, what: str = "id") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise ValueError(f"{what}: must be a positive integer generation id up to {MAX_ID} (got {value!r})")
    return value


def check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: must be an integer from 1 to {MAX_LIMIT} (got {limit!r})")
    return limit


def _text(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what}: must be a non-empty string (got {value!r})")
    return value


def as_utc(what: str, value: Any) -> datetime:
    """A datetime, a date (midnight UTC) or an ISO 8601 string; naive times are taken as UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{what}: must be an ISO date or time such as 2025-01-31 or 2025-01-31T12:00 (got {value!r})"
            ) from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(0))
    if not isinstance(value, datetime):
        raise ValueError(f"{what}: must be a datetime, a date or an ISO string (got {value!r})")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -- keyset cursor: newest first = highest id first (ids follow insertion order) -------------------


def encode_cursor(generation_id: int) -> str:
    return str(generation_id)


def decode_cursor(cursor: Any) -> int:
    text_ = str(cursor)
    if not (text_.isascii() and text_.isdigit()) or not 1 <= int(text_) <= MAX_ID:
        raise ValueError(f"after: must be a next_cursor returned by list or search (got {cursor!r})")
    return int(text_)


def is_fts_error(message: str) -> bool:
    lowered = message.lower()
    return any(
        words in lowered
        for words in ("fts5", "no such column", "unterminated string", "unknown special query", "malformed match")
    )


def normalise_tags(tags: Iterable[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise ValueError("tags: must be a list of strings, not one string")
    seen: dict[str, None] = {}
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or len(tag.strip()) > 64 or not tag.isprintable():
            raise ValueError(f"tags: each tag must be printable text of 1 to 64 characters (got {tag!r})")
        seen.setdefault(tag.strip(), None)
    if len(seen) > 64:
        raise ValueError(f"tags: at most 64 tags per generation (got {len(seen)})")
    return tuple(seen)
