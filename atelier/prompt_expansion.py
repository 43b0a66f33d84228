"""Dynamic prompts: `{a|b|c}` alternatives and `__name__` wildcards, drawn by the `dynamicprompts` library.

A wildcard is a text file in <home>/wildcards (`__colour__` ← wildcards/colour.txt, `__people/poses__`
← wildcards/people/poses.txt), one option per line; lines starting with `#` are comments. Everything
else of dynamicprompts' syntax works too (`{2$$a|b|c}` picks two, `{0.5::a|b}` weights).

Random mode (the default) draws draft i's prompt with draft i's seed, so the same seed gives the same
prompts again. Combinatorial mode gives every combination in order, at most as many as asked for.
Either way the Recipe records the resolved prompt (what the engine reads, so a re-run needs no
wildcard file) and the template it came from (`Recipe.prompt_template`).

Torch-free (standard library and dynamicprompts, which needs only pyparsing and jinja2): the CLI
checks a request before anything heavy loads. Errors a user can cause are ValueErrors naming `prompt`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

WILDCARDS_DIR = "wildcards"
# What makes a prompt dynamic: a brace (a `{…}` variant, or a typo in one) or a `__name__` wildcard. Other
# prompts are never parsed, so their text (`#`, `$$`, A1111 and compel syntax alike) reaches the engine as typed.
_DYNAMIC = re.compile(r"[{}]|__\S+?__")


def wildcards_folder(home: Path | str) -> Path:
    """Where the wildcard files of a home are: <home>/wildcards."""
    return Path(home).expanduser() / WILDCARDS_DIR


def is_dynamic(prompt: str) -> bool:
    """True when the prompt uses `{a|b}` alternatives or `__name__` wildcards."""
    return isinstance(prompt, str) and bool(_DYNAMIC.search(prompt))


def resolve_prompts(
    template: str, seeds: Sequence[int], *, combinatorial: bool = False, wildcards: Path | None = None
) -> list[str]:
    """The prompts a dynamic template gives: random mode one per seed (drawn with that seed);
    combinatorial mode every combination in order, at most len(seeds) of them."""
    from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator
    from pyparsing import ParseBaseException

    manager = _wildcard_manager(wildcards)
    try:
        if combinatorial:
            prompts = CombinatorialPromptGenerator(manager).generate(template, max_prompts=len(seeds))
        else:
            prompts = [RandomPromptGenerator(manager, seed=seed).generate(template, 1)[0] for seed in seeds]
    except ParseBaseException as exc:
        raise ValueError(
            f"prompt: {template!r} is not a valid dynamic prompt ({exc}); write alternatives as {{a|b|c}} "
            "and wildcards as __name__"
        ) from None
    for seed, prompt in zip(seeds, prompts):
        if not prompt.strip():
            raise ValueError(f"prompt: {template!r} gives an empty prompt (seed {seed}); give every choice some text")
    return prompts


def _wildcard_manager(folder: Path | None):
    """dynamicprompts' WildcardManager over `folder`, except that a wildcard with no options is a ValueError
    (the library would log a warning and leave `__name__` in the prompt)."""
    from dynamicprompts.wildcards import WildcardManager

    class StrictWildcards(WildcardManager):
        def get_values(self, wildcard: str):
            values = super().get_values(wildcard)
            if not len(values):
                where = f"in {folder}" if folder is not None else "(no wildcards folder)"
                raise ValueError(
                    f"prompt: no wildcard __{wildcard}__ {where}; put its options, one per line, in "
                    f"{Path(folder or WILDCARDS_DIR) / wildcard}.txt"
                )
            return values

    return StrictWildcards(folder if folder is not None and Path(folder).is_dir() else None)
