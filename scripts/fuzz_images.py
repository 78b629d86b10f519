"""Fuzz the image-loading path for longer than the test suite does, and report what happened.

    PYTHONPATH=src python scripts/fuzz_images.py --cases 20000 --seed 1

Generates hostile files with the Hypothesis strategies of ``tests/image_fuzz.py`` (damaged
images of every mode and format, random bytes, decompression-bomb headers, empty files),
reads each with ``read_image`` and tallies the outcome. Every case must end as a decoded
uint8 image or a ``DataError`` naming the file; anything else is counted as an escape and
printed. Then a few fixed cases that need the file system (a real decompression bomb, a
symlink loop, a FIFO, a folder named like an image, a dangling link) go through the
``skip`` policy of ``oneclass.data.screen``. Exit code 1 when anything escaped.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.image_fuzz

from hypothesis import Phase, given, seed  # noqa: E402
from tests.image_fuzz import check_case, fuzz_settings, image_files, png_bomb  # noqa: E402

from oneclass.data.base import FileSet  # noqa: E402
from oneclass.data.screen import screen  # noqa: E402
from oneclass.errors import DataError  # noqa: E402


def fuzz(cases: int, rng_seed: int, folder: Path) -> tuple[collections.Counter, list[str]]:
    outcomes: collections.Counter = collections.Counter()
    escapes: list[str] = []

    @seed(rng_seed)
    @fuzz_settings(cases, phases=[Phase.generate])
    @given(image_files())
    def one(case):
        try:
            outcomes[check_case(case, folder)] += 1
        except Exception:  # noqa: BLE001 - counting escapes is the point
            outcomes["ESCAPED"] += 1
            escapes.append(traceback.format_exc(limit=3))

    one()
    return outcomes, escapes


def real_bomb(path: Path, side: int = 50_000) -> None:
    """A 1-bit PNG of side x side black pixels whose file is a few hundred kB."""
    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    parts = [comp.compress(row) for _ in range(side)]
    path.write_bytes(png_bomb(side, side, b"".join(parts) + comp.flush()))


def fixed_cases(folder: Path) -> list[tuple[str, str]]:
    d = folder / "fixed"
    d.mkdir()
    real_bomb(d / "bomb.png")
    os.symlink(d / "loop_b.png", d / "loop_a.png")
    os.symlink(d / "loop_a.png", d / "loop_b.png")
    os.mkfifo(d / "fifo.png")
    (d / "folder.png").mkdir()
    os.symlink(d / "missing.png", d / "dangling.png")
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_text("not an image\n")
    names = sorted(p.name for p in d.iterdir())
    fs = FileSet([d / n for n in names], [-1] * len(names), names=names)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        _, bad = screen(fs, "skip", allow_empty=True)
    except DataError as exc:
        return [("(all)", str(exc))]
    seconds = time.perf_counter() - t0
    grow = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(f"fixed cases: {len(names)} files, {len(bad)} refused in {seconds:.2f} s, "
          f"peak memory grew {grow:.0f} MB (bomb is {(d / 'bomb.png').stat().st_size // 1024} kB "
          "for 2.5 G pixels)")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        outcomes, escapes = fuzz(args.cases, args.seed, Path(tmp))
        seconds = time.perf_counter() - t0
        total = sum(outcomes.values())
        print(f"fuzzed {total} cases (seed {args.seed}) in {seconds:.1f} s")
        for what, n in outcomes.most_common():
            print(f"  {n:>7}  {what}")
        for e in escapes[:5]:
            print(e)
        bad = fixed_cases(Path(tmp))
        for name, reason in bad:
            print(f"  refused {name}: {reason.split(': ', 1)[-1]}")
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
