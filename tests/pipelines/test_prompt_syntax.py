"""A1111 → compel translation and `<lora:…>` tokens (no model needed)."""

from __future__ import annotations

import math

import pytest
from compel.prompt_parser import PromptParser

from pipelines.prompt_syntax import (
    BREAK,
    detect_syntax,
    extract_lora_tokens,
    lora_name,
    merge_prompt_loras,
    parse_a1111_attention,
    prompt_warnings,
    to_compel,
)
from pipelines.recipe import LoraRef

# A1111's own docstring examples for parse_prompt_attention (modules/prompt_parser.py).
A1111_REFERENCE = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.573),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641),
            (".", 1.1),
        ],
    ),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_REFERENCE)
def test_parse_matches_a1111_reference(prompt, expected):
    got = parse_a1111_attention(prompt)
    assert [text for text, _ in got] == [text for text, _ in expected]
    assert all(math.isclose(w, e, rel_tol=1e-9) for (_, w), (_, e) in zip(got, expected))


TRANSLATIONS = [
    ("a photo of a cat", "a photo of a cat"),
    ("(word:1.2)", "(word)1.2"),
    ("a (word:1.2) b", "a (word)1.2 b"),
    ("((word))", "(word)1.21"),
    ("(((word)))", "(word)1.331"),
    ("[word]", "(word)0.9091"),
    ("[[word]]", "(word)0.8264"),
    ("((a:1.5) b)", "(a)1.65 (b)1.1"),
    ("(a, b. c:0.5)", "(a, b. c)0.5"),
    (r"\(literal\) parens", r"\(literal\) parens"),
    (r"\[square\]", "[square]"),
    (r"a \\ backslash", r"a \ backslash"),
    ('say "hi"', 'say \\"hi\\"'),
    ("((masterpiece)), best quality, [blurry]", "(masterpiece)1.21 , best quality, (blurry)0.9091"),
    # BREAK: each chunk encoded on its own, as compel's .and()
    ("a cat BREAK a dog", '("a cat", "a dog").and()'),
    ("(red:1.2) hat BREAK blue [sky]", '("(red)1.2 hat", "blue (sky)0.9091").and()'),
    ("a BREAK", "a"),
    ("BREAK a", '("", "a").and()'),
    ("a BREAK BREAK b", '("a", "", "b").and()'),
    ("(a BREAK b:1.2)", '("(a)1.2", "(b)1.2").and()'),
    ("BREAKFAST", "BREAKFAST"),
    # "+"/"-" after a word would be compel weighting: kept literal
    ("cat+ dog, a--", "cat + dog, a --"),
    ("well-lit, f/1.8", "well-lit, f/1.8"),
    ("(a - b:1.2)", "(a)1.2 - (b)1.2"),
    ("(x=y:1.1)", "(x)1.1 = (y)1.1"),
    # malformed input, as A1111 reads it
    ("x) (y", r"x\) (y)1.1"),
    ("(y:1.3", "(y:1.3)1.1"),
    ("a]", "a]"),
    ("(a:1.2.3)", r"(a:1.2.3\))1.1"),
    ("(a:)", "(a:)1.1"),
    ("((a)", "(a)1.21"),
    ("[unclosed", "(unclosed)0.9091"),  # an unclosed [ still divides by 1.1, as A1111 does
    ("[a [b", "(a)0.9091 (b)0.8264"),
    # weight 0 is allowed (the words are silenced), only negative weights are refused
    ("(word:0)", "(word)0"),
    ("(word:0.0) x", "(word)0 x"),
    ("((a:0) b)", "(a)0 (b)1.1"),
    ("", ""),
    ("a BREAK ( )", "a"),  # a trailing chunk of blank runs is dropped like an empty one
    # LoRA tokens are not text
    ("a <lora:foo:0.5> b", "a  b"),
]


@pytest.mark.parametrize(("a1111", "compel"), TRANSLATIONS)
def test_a1111_translation_table(a1111, compel):
    assert to_compel(a1111, "a1111") == compel


def _a1111_runs(prompt: str) -> list[list]:
    """A1111's chunks as [[(text without spaces, weight), ...], ...], merging equal weights."""
    chunks: list[list] = [[]]
    for run in parse_a1111_attention(prompt):
        if run is BREAK:
            chunks.append([])
        elif run[0].strip():
            _append(chunks[-1], run[0], run[1])
    return [c for c in chunks if c]


def _compel_runs(prompt: str) -> list[list]:
    chunks = []
    for part in PromptParser().parse_conjunction(prompt).prompts:
        runs: list = []
        for fragment in part.children:
            if fragment.text.strip():
                _append(runs, fragment.text, fragment.weight)
        if runs:
            chunks.append(runs)
    return chunks


def _append(runs: list, text: str, weight: float) -> None:
    # CLIP splits words from punctuation anyway, so spacing is not part of the meaning
    text, weight = "".join(text.split()), round(weight, 4)
    if runs and runs[-1][1] == weight:
        runs[-1] = (runs[-1][0] + text, weight)
    else:
        runs.append((text, weight))


REALISTIC = [
    "masterpiece, best quality, (ultra-detailed:1.2), 1girl, ((red hair)), [[lowres]], (blue eyes:0.8)",
    "(cinematic still:1.3) of a (fox:1.1) in a (snowy (pine forest):1.2), golden hour, 35mm, f/1.8",
    r"logo \(draft\), (bold text:1.4), \"ATELIER\", vector art BREAK (white background:1.1)",
    "portrait, (freckles, detailed skin:1.15), [[[blurry, jpeg artifacts]]], 8k uhd",
    "a castle on a hill BREAK (stormy sky:1.3) BREAK oil painting, (impasto)",
]


@pytest.mark.parametrize("prompt", REALISTIC)
def test_compel_reads_the_translation_with_a1111_weights(prompt):
    assert _compel_runs(to_compel(prompt, "a1111")) == _a1111_runs(prompt)


def test_compel_syntax_passes_through():
    prompt = "a (cat)1.3 on a mat++, ('red', 'blue').blend(0.5, 0.5)"
    assert to_compel(prompt, "compel") == prompt


def test_a1111_bracket_multipliers_are_pinned():
    from pipelines import prompt_syntax

    assert prompt_syntax._ROUND_MULTIPLIER == 1.1
    assert prompt_syntax._SQUARE_MULTIPLIER == 1 / 1.1
    assert parse_a1111_attention("[x]") == [("x", 1 / 1.1)]


def test_unknown_syntax_and_negative_weight_are_value_errors():
    with pytest.raises(ValueError, match="prompt_syntax: must be one of compel, a1111"):
        to_compel("a cat", "sd-next")
    with pytest.raises(ValueError) as refused:
        to_compel("(cat:-1.5)", "a1111")
    assert str(refused.value) == (
        "prompt: negative weight -1.5 on 'cat' is not supported (prompt weights go through compel, which has "
        "none); use a weight of 0 or more, or put 'cat' in the negative prompt"
    )
    with pytest.raises(ValueError, match=r"^prompt: must be a string \(got bytes\)$"):
        to_compel(b"a cat", "compel")


def test_an_empty_prompt_is_one_empty_run_at_weight_1():
    assert parse_a1111_attention("") == [("", 1.0)]


@pytest.mark.parametrize(
    ("prompt", "rest", "loras"),
    [
        ("a cat <lora:paper_cut:0.8>, red", "a cat , red", [("paper_cut", 0.8)]),
        ("<lora:style>a cat", "a cat", [("style", 1.0)]),
        ("<lora:a:0.5><lyco:b:-1.25> x <lora:a:2>", " x ", [("a", 0.5), ("b", -1.25), ("a", 2.0)]),
        ("<lora:two:0.6:0.9>", "", [("two", 0.6)]),
        ("<lora:named:te=0.7:unet=0.2>", "", [("named", 0.7)]),
        ("<lora: spaced name : 0.3 >", "", [("spaced name", 0.3)]),
        ("no tokens <hypernet:x:1>", "no tokens <hypernet:x:1>", []),
    ],
)
def test_extract_lora_tokens(prompt, rest, loras):
    assert extract_lora_tokens(prompt) == (rest, loras)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a <lora::0.5>", "prompt: LoRA token <lora::0.5> has no name; write <lora:name> or <lora:name:0.8>"),
        ("<lora:x:strong>", "prompt: LoRA token <lora:x:strong>: the weight must be a number (got 'strong')"),
        ("<lyco:x:te=0.5=>", "prompt: LoRA token <lyco:x:te=0.5=>: the weight must be a number (got '0.5=')"),
        ("<lora:x:nan>", "prompt: LoRA token <lora:x:nan>: the weight must be a finite number (got 'nan')"),
        ("<lora:x:te=inf>", "prompt: LoRA token <lora:x:te=inf>: the weight must be a finite number (got 'inf')"),
        ("<lora:x:-inf>", "prompt: LoRA token <lora:x:-inf>: the weight must be a finite number (got '-inf')"),
    ],
)
def test_bad_lora_tokens_are_value_errors(prompt, message):
    with pytest.raises(ValueError) as refused:
        extract_lora_tokens(prompt)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("name", "recorded"),
    [
        ("style", "style"),
        (" style.safetensors ", "style"),
        ("Style.SafeTensors", "Style"),
        ("sub/ink.safetensors", "sub/ink"),
        ("ink.ckpt", "ink.ckpt"),
        ("inksafetensors", "inksafetensors"),
        ("a.safetensors.safetensors", "a.safetensors"),
    ],
)
def test_lora_names_are_recorded_without_the_extension(name, recorded):
    assert lora_name(name) == recorded


def test_a_prompt_token_sets_its_loras_weight():
    picked = (LoraRef("ink.safetensors", sha256="a" * 64, weight=0.5), LoraRef("paper", weight=0.7))
    merged = merge_prompt_loras(picked, "a fox <lora:ink:0.9>, <lora:glow.safetensors:0.2>")
    assert merged == (
        LoraRef("ink", sha256="a" * 64, weight=0.9),
        LoraRef("paper", weight=0.7),
        LoraRef("glow", weight=0.2),
    )
    assert merge_prompt_loras(picked, "a fox") == (LoraRef("ink", sha256="a" * 64, weight=0.5), picked[1])
    assert merge_prompt_loras((), "<lora:glow>") == (LoraRef("glow", weight=1.0),)
    assert merge_prompt_loras((), "a fox") == ()


def test_a_lora_given_twice_is_refused_in_words():
    with pytest.raises(ValueError) as refused:
        merge_prompt_loras((LoraRef("ink"), LoraRef("ink.safetensors")), "")
    assert str(refused.value) == "loras: the LoRA 'ink' appears twice in the LoRA list; give each LoRA once"
    with pytest.raises(ValueError) as refused:
        merge_prompt_loras((LoraRef("ink"),), "<lora:ink:0.5> <lora:ink.safetensors:1>")
    assert str(refused.value) == "prompt: the LoRA 'ink' appears twice in the prompt; give each LoRA once"


@pytest.mark.parametrize(
    ("prompt", "syntax"),
    [
        ("a photo of a cat, 35mm", "compel"),  # plain text reads the same in both
        ("", "compel"),
        ("(word:1.2)", "a1111"),
        ("(word : -0.5 )", "a1111"),
        ("((word))", "a1111"),
        ("(a (b) c)", "a1111"),
        ("(word)", "a1111"),
        ("[word]", "a1111"),
        ("a BREAK b", "a1111"),
        ("BREAKFAST", "compel"),
        (r"\(literal\)", "a1111"),
        (r"\[x", "a1111"),
        ("(word)1.2", "compel"),
        ("(word).9", "compel"),
        ("a cat++", "compel"),
        ("cat+ dog", "compel"),
        ("cat-, dog", "compel"),
        ("(fox)- hat", "compel"),
        ("well-lit", "compel"),
        ("('a', 'b').blend(0.5, 0.5)", "compel"),
        ('("a", "b").and()', "compel"),
        ("a.swap(b)", "compel"),
        ("(x)1.2 (y:1.1)", "compel"),  # a compel construct wins
        ("<lora:x:0.5> a cat", "compel"),  # LoRA tokens are neither
    ],
)
def test_detect_syntax(prompt, syntax):
    assert detect_syntax(prompt) == syntax


EDITING = "[from:to:when] prompt editing is not supported: it is read as weighted text"
ALTERNATION = "[a|b] alternation is not supported: it is read as weighted text"
A1111_IN_COMPEL = (
    "(words:1.2) is A1111 weighting; with compel syntax it is read as plain text (choose auto or a1111, or write "
    "(words)1.2)"
)


@pytest.mark.parametrize(
    ("prompt", "syntax", "warnings"),
    [
        ("a [cat:dog:0.5]", "a1111", [EDITING]),
        ("a [cat : dog : 10]", "a1111", [EDITING]),
        ("a [cat|dog]", "a1111", [ALTERNATION]),
        ("[cat|dog] [a:b:0.3]", "a1111", [EDITING, ALTERNATION]),
        ("a [cat] (dog:1.2)", "a1111", []),
        ("a [cat:dog:soon]", "a1111", []),
        ("a [cat|dog]", "compel", []),
        ("a (cat:1.2)", "compel", [A1111_IN_COMPEL]),
        ("a (cat)", "compel", []),
        ("a (cat)1.2", "compel", []),
        ("a (cat:1.2)", "auto", []),
    ],
)
def test_prompt_warnings(prompt, syntax, warnings):
    assert prompt_warnings(prompt, syntax) == warnings
