"""Run by test_gallery_crash.py: saves (drafts, and inpaint / upscale / vary results with their input files
and parents), deletes and edits in a loop until SIGKILLed.

Usage: crash_writer.py HOME SEED LOG [DATABASE_URL]. Each completed action is appended to LOG (unbuffered, so
what the kernel has is what was reported): "open", "saved ID", "deleting ID", "deleted ID".

crash_writer.py --serve: a fork server, so that a round costs no interpreter start-up and no storage
import (about a second on a busy 2-core machine). For each line "HOME<TAB>SEED<TAB>LOG<TAB>STDERR<TAB>URL" on
stdin (URL empty: SQLite in HOME) it forks a writer (as the command line above, its stderr to the file STDERR) and
prints the writer's pid, then, once the writer has ended, its exit code (-N: killed by signal N).
The ended writer is reaped only when the next line (or the end of stdin) comes, so its pid cannot
be reused while the test may still signal it.
"""

from __future__ import annotations

import os
import random
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]

from storage_checks import make_latent, make_png, make_recipe, sha  # noqa: E402

from storage.gallery import Gallery  # noqa: E402


def serve() -> None:
    previous = None
    while line := sys.stdin.readline():
        if previous is not None:
            os.waitpid(previous, 0)
        home, seed, log_path, stderr_path, url = line.rstrip("\n").split("\t")
        pid = os.fork()
        if pid == 0:  # the writer
            code = 1
            try:
                null = os.open(os.devnull, os.O_RDWR)
                err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(null, 0), os.dup2(null, 1), os.dup2(err, 2)
                main([home, seed, log_path, url])
                code = 0
            except BaseException:  # noqa: BLE001 - reported on its stderr, as a crashed process would
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)
        ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # not reaped yet: the pid stays taken
        killed = ended.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        print(-ended.si_status if killed else ended.si_status, flush=True)
        previous = pid
    if previous is not None:
        os.waitpid(previous, 0)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    home, seed, log_path = Path(argv[0]), int(argv[1]), argv[2]
    url = argv[3] if len(argv) > 3 and argv[3] else None
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    say = lambda text: os.write(log, f"{text}\n".encode())  # noqa: E731
    rng = random.Random(seed)
    gallery = Gallery.open(home, database_url=url)
    say("open")
    known = [g.id for g in gallery.list(limit=200).items]
    n = seed * 1_000_000
    while True:
        n += 1
        roll = rng.random()
        if roll < 0.6 or not known:
            image = make_png(rng.randrange(40) if rng.random() < 0.3 else n)  # some images shared
            parent = rng.choice(known) if known and rng.random() < 0.5 else None
            saved = _save_like_an_edit(gallery, rng, n, image, parent) if parent and rng.random() < 0.5 else None
            saved = saved or gallery.save(
                make_recipe(seed=n, prompt=f"crash test {n % 97}"),
                "draft",
                image,
                parent_id=parent,
                latent=make_latent(n) if rng.random() < 0.5 else None,
            )
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


def _save_like_an_edit(gallery, rng: random.Random, n: int, image: bytes, parent: int):
    """What an inpaint, an upscale or a vary saves: a child of `parent` with its input files (the source,
    and for inpainting the mask) stored by sha256 beside the image, or a draft with a variation seed."""
    how = rng.choice(("inpaint", "upscale", "vary"))
    if how == "vary":
        recipe = make_recipe(seed=n, prompt=f"crash test {n % 97}", variation_seed=n + 1, variation_strength=0.1)
        return gallery.save(recipe, "draft", image, parent_id=parent, latent=make_latent(n))
    source = make_png(rng.randrange(40) if rng.random() < 0.3 else n + 7)
    inputs, fields = {"source": source}, {"source_image_sha256": sha(source)}
    if how == "inpaint":
        mask = make_png(n + 11)
        inputs["mask"], fields["mask_sha256"] = mask, sha(mask)
    recipe = make_recipe(seed=n, prompt=f"crash test {n % 97}", mode="img2img", strength=0.4, **fields)
    return gallery.save(recipe, "img2img", image, parent_id=parent, inputs=inputs)


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["--serve"] else main()
