"""The A1111 infotext reader is linear: same pairs as A1111's own regex, without its backtracking."""

from __future__ import annotations

import random
import re
import time

import pytest

from pipelines.provenance import infotext
from pipelines.provenance.infotext import parse_a1111_parameters, recipe_from_a1111, settings_pairs

# A1111's `re_param` (modules/infotext_utils.py), the reference the hand-written scanner must agree with.
A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
ALPHABET = ["a", "b", "Z", "1", "_", "é", " ", " ", "\t", "-", "/", ":", ":", ",", ",", '"', '"', "\\", "x", "."]


@pytest.mark.parametrize("seed", range(6))
def test_settings_pairs_match_a1111s_regex_on_random_lines(seed):
    rng = random.Random(seed)
    for _ in range(3000):
        line = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40)))
        assert settings_pairs(line) == A1111_RE_PARAM.findall(line), line


@pytest.mark.parametrize(
    "line",
    [
        "Steps: 30, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 1024x1024",
        'Lora hashes: "a: 123, b: 456", Hires upscaler: Latent (nearest), Version: v1.9.4',
        'Prompt syntax: "x \\" y", Empty: , Quoted: "", Odd: "unterminated, Last: 1',
        '  Weird key-name/2 : value ,A: b,,,Key:"q"x, Key2: "ok"',
    ],
)
def test_settings_pairs_match_a1111s_regex_on_real_lines(line):
    assert settings_pairs(line) == A1111_RE_PARAM.findall(line)


def _hostile_texts(size: int) -> dict[str, str]:
    """Lines on which A1111's regex backtracks (each start position rescans the run)."""
    return {
        "key characters, no colon": "ab" * (size // 2),
        "spaces then no key": " " * size,
        "words and spaces": "a " * (size // 2),
        "quotes never closed": 'k: "' + "x," * (size // 2),
        "many keys": "Steps: 1, " * (size // 10),
        "escapes": 'k: "' + "\\" * size,
        "brackets in a refiner": "Steps: 1, Seed: 1, Size: 64x64, Refiner: " + "[a" * (size // 2),
    }


@pytest.mark.parametrize("size", [64 * 1024, 1024 * 1024])
def test_hostile_infotext_parses_in_linear_time(size):
    # A1111's regex needs minutes on the 64 KB texts; the generous bound stays far from a tight timing.
    for what, text in _hostile_texts(size).items():
        started = time.perf_counter()
        fields = parse_a1111_parameters("a prompt\n" + text)
        assert time.perf_counter() - started < 2.0, what
        assert "Prompt" in fields


def test_the_scanner_visits_each_position_a_bounded_number_of_times(monkeypatch):
    """Counted, not timed: the key search runs once per key candidate, never once per character of a run."""
    calls = 0
    original = infotext._RE_KEY_START

    class Counting:
        def search(self, line, pos):
            nonlocal calls
            calls += 1
            return original.search(line, pos)

    monkeypatch.setattr(infotext, "_RE_KEY_START", Counting())
    settings_pairs("ab" * 50_000)  # one run of key characters, no colon: one candidate
    assert calls <= 2
    calls = 0
    settings_pairs("ab cd, " * 10_000)  # 10,000 runs: one candidate each
    assert calls <= 10_001


def test_a_huge_prompt_in_parameters_is_refused_by_the_prompt_limit_quickly():
    text = "word " * 200_000 + "\nSteps: 20, Seed: 1, Size: 1024x1024"
    started = time.perf_counter()
    with pytest.raises(ValueError, match="A1111 parameters: prompt: 999999 characters is over the limit of 4000"):
        recipe_from_a1111(text)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(
    "title, expected",
    [
        ("sd_xl_refiner_1.0 [7440042bbd]", ("sd_xl_refiner_1.0", "7440042bbd")),
        ("name  [abc]", ("name", "abc")),
        ("name [not hex]", ("name [not hex]", None)),
        ("name", ("name", None)),
        ("[abc]", ("", "abc")),
        ("a [b] [cd]", ("a [b]", "cd")),
    ],
)
def test_refiner_titles_split_as_a1111_does(title, expected):
    reference = re.match(r"^(.*?)(?:\s*\[([0-9a-fA-F]+)\])?$", title).groups()
    assert infotext._title_and_hash(title) == expected == reference
