"""A data root whose classic benchmark images went once more through JPEG (probe of issue 4).

    PYTHONPATH=src python scripts/jpeg_copy.py --data-root ../shared/data \
        --out /tmp/data-q75 --quality 75 --sets mnist fashion-mnist cifar10

The CIFAR-10 copy of the shared data is itself a JPEG re-encoding (quality 75, 4:2:0 chroma,
the standard tables: what Pillow writes with ``quality=75``), while MNIST and Fashion-MNIST
are lossless. Each set named is decoded as the benchmarks read it, every image of both
splits is saved as a JPEG of ``--quality`` with Pillow's defaults (gray images stay gray, so
they get no chroma subsampling) and decoded again, and the result is written to ``--out`` in
the same npz layout, so that ``oneclass bench ... --data-root OUT`` runs the same jobs on
the degraded pixels:

- MNIST and Fashion-MNIST: the lossless images through one JPEG round trip (what a lossy
  copy of them would be);
- CIFAR-10: the JPEG images through a second round trip (the bytes are the new JPEG files).

It prints the root-mean-square change of the pixels (0-255 levels) per set and split.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from oneclass.data.classic import ALIASES, FILES, _arrays  # noqa: E402


def jpeg_bytes(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decode(data: bytes, mode: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quality", type=int, default=75)
    ap.add_argument("--sets", nargs="+", default=["mnist", "fashion-mnist", "cifar10"])
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for raw in args.sets:
        name = ALIASES.get(raw, raw)
        arrays = {}
        for split in ("train", "test"):
            x, y = _arrays(name, str(args.data_root), split)
            mode = "RGB" if x.ndim == 4 else "L"
            files = [jpeg_bytes(img, args.quality) for img in x]
            x2 = np.stack([decode(f, mode) for f in files])
            rms = float(np.sqrt(np.mean((x2.astype(np.float64) - x) ** 2)))
            print(f"{name} {split}: {len(x)} images, RMS change {rms:.2f} levels "
                  f"(JPEG quality {args.quality})", flush=True)
            if name == "cifar10":
                lens = np.array([len(f) for f in files], dtype=np.int64)
                arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(files), dtype=np.uint8)
                arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum(lens)])
            else:
                arrays[f"x_{split}"] = x2
            arrays[f"y_{split}"] = y
        path = args.out / FILES[name]
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
