"""Run by test_gallery_crash.py: saves, deletes and edits in a loop until SIGKILLed.

Usage: crash_writer.py HOME SEED LOG. Each completed action is appended to LOG (unbuffered, so
what the kernel has is what was reported): "open", "saved ID", "deleting ID", "deleted ID".
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]

from storage.gallery import Gallery  # noqa: E402
from storage_checks import make_latent, make_png, make_recipe  # noqa: E402


def main() -> None:
    home, seed, log_path = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    say = lambda text: os.write(log, f"{text}\n".encode())  # noqa: E731
    rng = random.Random(seed)
    gallery = Gallery.open(home)
    say("open")
    known = [g.id for g in gallery.list(limit=200).items]
    n = seed * 1_000_000
    while True:
        n += 1
        roll = rng.random()
        if roll < 0.6 or not known:
            image = make_png(rng.randrange(40) if rng.random() < 0.3 else n)  # some images shared
            parent = rng.choice(known) if known and rng.random() < 0.5 else None
            saved = gallery.save(make_recipe(seed=n, prompt=f"crash test {n % 97}"), "draft", image,
                                 parent_id=parent, latent=make_latent(n) if rng.random() < 0.5 else None)
            known.append(saved.id)
            say(f"saved {saved.id}")
        elif roll < 0.8:
            victim = known.pop(rng.randrange(len(known)))
            say(f"deleting {victim}")
            gallery.delete(victim)
            say(f"deleted {victim}")
        elif roll < 0.9:
            gallery.set_tags(rng.choice(known), [f"t{rng.randrange(5)}", "crash"])
        else:
            gallery.search(f"crash {rng.randrange(97)}", limit=5)


if __name__ == "__main__":
    main()
