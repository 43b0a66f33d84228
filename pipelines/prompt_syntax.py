"""Prompt syntaxes: A1111 attention syntax translated to compel, and `<lora:…>` tokens. No torch.

A1111 (AUTOMATIC1111's web UI) syntax:
  (text)        weight × 1.1 per pair of parentheses, nested pairs multiply: ((text)) = 1.21
  [text]        weight ÷ 1.1 per pair of square brackets
  (text:1.3)    explicit weight (multiplies any enclosing brackets)
  \\( \\) \\[ \\]   literal brackets; \\\\ a literal backslash
  BREAK         ends the current 77-token chunk; the text after it is encoded as a chunk of its own
  <lora:name:w> a LoRA to apply (taken out of the prompt; see `extract_lora_tokens`)
Unbalanced brackets behave as in A1111: an unclosed "(" or "[" extends to the end of the prompt, a
stray ")" or "]" is literal text.

The translation parses the prompt exactly as A1111's `parse_prompt_attention` does, into runs of
(text, weight), and writes each run in compel syntax: weight 1 as plain (escaped) text, any other
weight as `(text)w`. BREAK becomes compel's `("chunk 1", "chunk 2").and()`: compel encodes each part
separately and concatenates the embeddings along the token axis, which is what A1111 does for a
BREAK (each chunk padded to 77 tokens and encoded alone).

Known differences from A1111, all about tokens no real prompt relies on:
- A standalone "+", "-" or "=" inside a weighted run is written outside it, at weight 1 (compel's
  grammar has no way to say a bare "-" with a weight).
- Inside a weighted run compel separates "." and "," with spaces, so a run of punctuation such as
  "..." becomes three "." tokens instead of CLIP's single "..." token.
- Negative weights (`(text:-1)`) have no compel form: ValueError (the negative prompt is the way).
- A1111's prompt editing `[from:to:when]` and alternation `[a|b]` are not supported: the brackets
  act as a ÷1.1 weight and the ":" and "|" stay literal text.
- A BREAK inside brackets still breaks (A1111 instead encodes the word "BREAK", a bug there).
"""

from __future__ import annotations

import dataclasses
import re

from pipelines.recipe import PROMPT_SYNTAXES, LoraRef

_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1

# Exactly A1111's tokenizer for attention syntax (modules/prompt_parser.py).
_RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_RE_LORA = re.compile(r"<(lora|lyco):([^>]*)>")

# compel's grammar (prompt_parser.build_parser_syntax) reads "+"/"-" right after a word as a weight
# when the run is longer than one character or is followed by a space, syntax character or the end.
_RE_WORD_OPERATOR = re.compile(r'([^\s+\-])([+-]{2,}|[+-](?=[\s()",.=]|$))')
# What compel cannot hold inside `( … )` at all: such runs and any "=".
_RE_BARE_OPERATOR = re.compile(r'[+\-=]{2,}|=|[+-](?=[\s()",.=]|$)')


class _Break:
    """Marks a BREAK between chunks in the parsed list (never multiplied by brackets)."""


BREAK = _Break()


def parse_a1111_attention(text: str) -> list[tuple[str, float] | _Break]:
    """Parse A1111 attention syntax into runs of (text, weight), with `BREAK` markers between chunks.

    Adjacent runs of equal weight are merged, as A1111 does. An explicit weight that is not a
    number ("(a:1.2.3)") stays literal text instead of failing.
    """
    res: list[list] = []  # [text, weight] pairs, or [BREAK, None]
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for item in res[start:]:
            if item[0] is not BREAK:
                item[1] *= multiplier

    for match in _RE_ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if weight is not None:
            try:
                weight_value = float(weight)
            except ValueError:
                weight_value = None
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight is not None and weight_value is not None and round_brackets:
            multiply_range(round_brackets.pop(), weight_value)
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), _SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_RE_BREAK.split(token)):
                if i > 0:
                    res.append([BREAK, None])
                res.append([part, 1.0])

    for start in round_brackets:
        multiply_range(start, _ROUND_MULTIPLIER)
    for start in square_brackets:
        multiply_range(start, _SQUARE_MULTIPLIER)

    merged: list[list] = []
    for item in res:
        if merged and item[0] is not BREAK and merged[-1][0] is not BREAK and merged[-1][1] == item[1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    if not merged:
        merged = [["", 1.0]]
    return [BREAK if text is BREAK else (text, weight) for text, weight in merged]


def _chunks(runs: list[tuple[str, float] | _Break]) -> list[list[tuple[str, float]]]:
    """Split at BREAK markers. Like A1111, a trailing empty chunk is dropped, inner ones are kept."""
    chunks: list[list[tuple[str, float]]] = [[]]
    for run in runs:
        if run is BREAK:
            chunks.append([])
        else:
            chunks[-1].append(run)
    if len(chunks) > 1 and not "".join(text for text, _ in chunks[-1]).strip():
        chunks.pop()
    return chunks


def _format_weight(weight: float) -> str:
    return f"{round(weight, 4):.4f}".rstrip("0").rstrip(".")


def _escape(text: str) -> str:
    return text.replace("(", "\\(").replace(")", "\\)").replace('"', '\\"')


def _plain(text: str) -> str:
    """Weight-1 text: escape brackets and quotes, and keep a "+"/"-" run that ends a word from being
    read as compel's `word+` weighting (a space there does not change CLIP's tokens)."""
    return _RE_WORD_OPERATOR.sub(lambda m: m.group(1) + " " + m.group(2), _escape(text))


def _weighted(text: str, weight: float) -> list[str]:
    """`(text)w`, with bare operator characters written outside at weight 1."""
    if weight < 0:
        raise ValueError(
            f"prompt: negative weight {_format_weight(weight)} on {text.strip()!r} is not supported (prompt weights "
            f"go through compel, which has none); use a weight of 0 or more, or put {text.strip()!r} in the "
            "negative prompt"
        )
    pieces: list[str] = []
    start = 0
    for match in [*_RE_BARE_OPERATOR.finditer(text), None]:
        inside = text[start : match.start() if match else len(text)].strip()
        if inside:
            pieces.append(f"({_escape(inside)}){_format_weight(weight)}")
        if match:
            pieces.append(match.group(0))
            start = match.end()
    return pieces


def _chunk_to_compel(chunk: list[tuple[str, float]]) -> str:
    pieces: list[str] = []
    for text, weight in chunk:
        if weight == 1.0:
            if text.strip():
                pieces.append(_plain(text).strip())
        else:
            pieces.extend(_weighted(text, weight))
    return " ".join(pieces)


def a1111_to_compel(prompt: str) -> str:
    """Translate an A1111-syntax prompt into a compel prompt (LoRA tokens are removed first)."""
    prompt, _ = extract_lora_tokens(prompt)
    chunks = [_chunk_to_compel(chunk) for chunk in _chunks(parse_a1111_attention(prompt))]
    if len(chunks) == 1:
        return chunks[0]
    # Inside compel's quoted parts an escaped quote is written \" (already done by _escape).
    return "(" + ", ".join(f'"{chunk}"' for chunk in chunks) + ").and()"


def to_compel(prompt: str, syntax: str) -> str:
    """The prompt in compel syntax: "compel" passes through unchanged, "a1111" is translated."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: must be a string (got {type(prompt).__name__})")
    if syntax == "compel":
        return prompt
    if syntax == "a1111":
        return a1111_to_compel(prompt)
    raise ValueError(f"prompt_syntax: must be one of {', '.join(PROMPT_SYNTAXES)} (got {syntax!r})")


def _lora_weight(token: str, value: str) -> float:
    try:
        weight = float(value)
    except ValueError:
        raise ValueError(f"prompt: LoRA token {token}: the weight must be a number (got {value!r})") from None
    if weight != weight or weight in (float("inf"), float("-inf")):
        raise ValueError(f"prompt: LoRA token {token}: the weight must be a finite number (got {value!r})")
    return weight


def extract_lora_tokens(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Take `<lora:name>` / `<lora:name:weight>` tokens out of a prompt.

    Returns the prompt with the tokens removed (nothing else changes, as in A1111) and the
    (name, weight) pairs in order of appearance; the weight defaults to 1.0. Of A1111's extra
    arguments (`<lora:name:te:unet>`, `te=`/`unet=`) the text-encoder weight is the one kept.
    `<lyco:…>` is A1111's alias for the same thing.
    """
    loras: list[tuple[str, float]] = []
    for match in _RE_LORA.finditer(prompt):
        token = match.group(0)
        args = [a.strip() for a in match.group(2).split(":")]
        name = args[0]
        if not name:
            raise ValueError(f"prompt: LoRA token {token} has no name; write <lora:name> or <lora:name:0.8>")
        weight = 1.0
        positional = [a for a in args[1:] if "=" not in a]
        named = dict(a.split("=", 1) for a in args[1:] if "=" in a)
        if positional:
            weight = _lora_weight(token, positional[0])
        elif "te" in named:
            weight = _lora_weight(token, named["te"].strip())
        loras.append((name, weight))
    return _RE_LORA.sub("", prompt), loras


def lora_name(name: str) -> str:
    """A LoRA's name as recipes record it: relative to the LoRA folder, without ".safetensors"."""
    name = name.strip()
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name


def merge_prompt_loras(picked: tuple[LoraRef, ...], prompt: str) -> tuple[LoraRef, ...]:
    """The LoRAs a request uses: `picked` (a LoRA list or --lora) plus the prompt's `<lora:name:w>`
    tokens. The one rule, for every front end and the engine: **a token in the prompt sets the weight
    of its LoRA**; a picked LoRA not named in the prompt keeps its picked weight. Names are compared
    without ".safetensors"; a picked entry keeps its recorded sha256. A LoRA named twice in the
    prompt, or picked twice, is an error."""
    _, tokens = extract_lora_tokens(prompt)
    merged: dict[str, LoraRef] = {}
    for ref in picked:
        name = lora_name(ref.name)
        if name in merged:
            raise ValueError(f"loras: the LoRA {name!r} appears twice in the LoRA list; give each LoRA once")
        merged[name] = dataclasses.replace(ref, name=name)
    seen: set[str] = set()
    for token_name, weight in tokens:
        name = lora_name(token_name)
        if name in seen:
            raise ValueError(f"prompt: the LoRA {name!r} appears twice in the prompt; give each LoRA once")
        seen.add(name)
        merged[name] = (
            dataclasses.replace(merged[name], weight=weight) if name in merged else LoraRef(name=name, weight=weight)
        )
    return tuple(merged.values())


# Constructs only A1111 gives a meaning to (compel's own are `word+`, `(words)1.3`, `.blend()`, `.and()`).
_A1111_ONLY = (
    ("(words:1.2)", re.compile(r"\([^()]*:\s*[+-]?[\d.]+\s*\)")),
    ("(words) without a compel weight after it", re.compile(r"\((?:[^()]|\([^()]*\))*\)(?![\d.+-])")),
    ("[words]", re.compile(r"\[[^\[\]]*\]")),
    ("BREAK", re.compile(r"\bBREAK\b")),
    ("\\( or \\[ escapes", re.compile(r"\\[()\[\]]")),
)
_COMPEL_ONLY = re.compile(r"\)[\d.]+|[\w)][+-]+(?=\s|,|$)|\.(?:blend|and|swap)\(")
# A1111 features Atelier does not have; they are read as plain weighted text, so the user is told.
_UNSUPPORTED = (
    ("[from:to:when] prompt editing", re.compile(r"\[[^\[\]]*:[^\[\]]*:\s*[\d.]+\s*\]")),
    ("[a|b] alternation", re.compile(r"\[[^\[\]]*\|[^\[\]]*\]")),
)


def detect_syntax(prompt: str) -> str:
    """ "a1111" when the prompt uses a construct only A1111 gives a meaning to ((words:1.2), ((words)),
    [words], BREAK, \\( escapes) and no compel one; otherwise "compel" (plain text reads the same in both)."""
    text, _ = extract_lora_tokens(prompt)
    if _COMPEL_ONLY.search(text):
        return "compel"
    return "a1111" if any(pattern.search(text) for _, pattern in _A1111_ONLY) else "compel"


def prompt_warnings(prompt: str, syntax: str) -> list[str]:
    """What will not do what the user probably meant: A1111 constructs Atelier does not support, or
    A1111 weighting in a prompt read as compel."""
    text, _ = extract_lora_tokens(prompt)
    found = []
    if syntax == "a1111":
        found += [f"{name} is not supported: it is read as weighted text" for name, p in _UNSUPPORTED if p.search(text)]
    elif syntax == "compel" and _A1111_ONLY[0][1].search(text):
        found.append(
            "(words:1.2) is A1111 weighting; with compel syntax it is read as plain text "
            "(choose auto or a1111, or write (words)1.2)"
        )
    return found
