"""Full-text search on PostgreSQL, in the query language of SQLite's FTS5 index (storage.search).

The document is the text search vector of prompt (weight A), negative (B) and prompt template (C), with
diacritics removed (the `unaccent` extension through an immutable wrapper, so it can be indexed), and
the GIN index of revision 0005 serves exactly this expression. A user's query is translated here into a
`to_tsquery` expression: plain words (all must appear), "quoted phrases", prefix*, AND / OR / NOT,
parentheses and `prompt:` / `negative:` / `prompt_template:` column filters (as tsquery weights). NEAR has
no PostgreSQL form and is refused; malformed queries are refused with the same words as on SQLite.
"""

from __future__ import annotations

import re
import unicodedata

from sqlalchemy import text
from sqlalchemy.sql.elements import ColumnElement

# Keep in step with migration 0005: the index serves only this exact expression.
PG_DOCUMENT = (
    "(setweight(to_tsvector('simple'::regconfig, atelier_unaccent(coalesce(prompt, ''))), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, atelier_unaccent(coalesce(negative, ''))), 'B') || "
    "setweight(to_tsvector('simple'::regconfig, atelier_unaccent(coalesce(prompt_template, ''))), 'C'))"
)
COLUMN_WEIGHTS = {"prompt": "A", "negative": "B", "prompt_template": "C"}
OPERATORS = ("AND", "OR", "NOT", "NEAR")
_BAREWORD_END = re.compile(r'[\s"():]')


class QueryError(ValueError):
    """A query the translation cannot read; the caller words it like SQLite's own syntax errors."""


def plain_text(value: str) -> str:
    """Lower case without diacritics, as the document is indexed (unaccent) and FTS5 reads it."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def _tokens(query: str) -> list[tuple[str, str]]:
    """(kind, text) pairs: phrase, word, column, op, "(", ")"."""
    tokens, i = [], 0
    while i < len(query):
        c = query[i]
        if c.isspace():
            i += 1
        elif c == '"':
            end = i + 1
            while True:
                end = query.find('"', end)
                if end == -1:
                    raise QueryError("unterminated string")
                if query[end + 1 : end + 2] != '"':
                    break
                end += 2
            tokens.append(("phrase", query[i + 1 : end].replace('""', '"')))
            i = end + 1
        elif c in "()":
            tokens.append((c, c))
            i += 1
        elif c == ":":
            raise QueryError("syntax error near ':'")
        else:
            match = _BAREWORD_END.search(query, i)
            end = match.start() if match else len(query)
            word = query[i:end]
            if query[end : end + 1] == ":":
                if word not in COLUMN_WEIGHTS:
                    raise QueryError(f"no such column: {word}")
                tokens.append(("column", word))
                end += 1
            else:
                tokens.append(("op" if word in OPERATORS else "word", word))
            i = end
    return tokens


def _lexemes(value: str, weight: str, *, prefix: bool = False) -> str:
    parts = re.findall(r"\w+", plain_text(value))
    if not parts:
        raise QueryError(f"no word in {value!r}")
    marks = [weight] * len(parts)
    if prefix:
        marks[-1] = "*" + weight
    return "(" + " <-> ".join(f"'{part}'" + (f":{mark}" if mark else "") for part, mark in zip(parts, marks)) + ")"


class _Parser:
    """FTS5's precedence: NOT binds tighter than AND (also implicit), AND tighter than OR."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens, self.at = tokens, 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise QueryError("syntax error at the end of the query")
        self.at += 1
        return token

    def parse(self) -> str:
        expression = self.any_of("")
        if self.peek() is not None:
            raise QueryError(f"syntax error near {self.peek()[1]!r}")
        return expression

    def any_of(self, weight: str) -> str:
        left = self.all_of(weight)
        while self.peek() == ("op", "OR"):
            self.take()
            left = f"({left} | {self.all_of(weight)})"
        return left

    def all_of(self, weight: str) -> str:
        left = self.without(weight)
        while self.peek() is not None and self.peek() not in (("op", "OR"), (")", ")")):
            if self.peek() == ("op", "AND"):
                self.take()
            left = f"({left} & {self.without(weight)})"
        return left

    def without(self, weight: str) -> str:
        left = self.term(weight)
        while self.peek() == ("op", "NOT"):
            self.take()
            left = f"({left} & !{self.term(weight)})"
        return left

    def term(self, weight: str) -> str:
        kind, value = self.take()
        if kind == "column":
            return self.term(COLUMN_WEIGHTS[value])
        if kind == "(":
            inner = self.any_of(weight)
            if self.take() != (")", ")"):
                raise QueryError("syntax error: ( without )")
            return inner
        if kind == "phrase":
            return _lexemes(value, weight)
        if kind == "word":
            return _lexemes(value.rstrip("*"), weight, prefix=value.endswith("*"))
        if value == "NEAR":
            raise QueryError("NEAR needs SQLite's full-text index")
        raise QueryError(f"syntax error near {value!r}")


def pg_tsquery(fts_query: str) -> str:
    """The `to_tsquery` text for a query already in FTS5 form (storage.search.fts_query's output)."""
    return _Parser(_tokens(fts_query)).parse()


def pg_text_condition(fts_query: str) -> ColumnElement[bool]:
    return text(f"{PG_DOCUMENT} @@ to_tsquery('simple'::regconfig, :pg_tsquery)").bindparams(
        pg_tsquery=pg_tsquery(fts_query)
    )
