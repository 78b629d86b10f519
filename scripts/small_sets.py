"""Four small MVTec-layout sets (40 training images each) for checking defaults on small data.

    python scripts/small_sets.py OUT [--data-root ../shared/data]

OUT/gravel: colour gravel crops (300x200) with drawn scratches and rust spots (the
twenty-seventh session's walk-through set); OUT/ksdd40: 40 seeded KolektorSDD training images
and its whole test split; OUT/elpv40: 40 / 60 / 60 ELPV cells (needs elpv-dataset);
OUT/brick40: grayscale brick crops with drawn cracks and blobs. Used in
docs/benchmark-notes.md (twenty-eighth session).
"""
import argparse
import shutil
from pathlib import Path

import numpy as np
import skimage.data as sd
from PIL import Image, ImageDraw


def fresh(d: Path, kinds, masks=True) -> Path:
    if d.exists():
        shutil.rmtree(d)
    subs = ["train/good", "test/good"] + [f"test/{k}" for k in kinds]
    subs += [f"ground_truth/{k}" for k in kinds] if masks else []
    for k in subs:
        (d / k).mkdir(parents=True)
    return d


def write_set(d: Path, normal, n_train: int, n_good: int, defects, n_each: int) -> None:
    """``n_train`` and ``n_good`` images of ``normal()``, then ``n_each`` of each
    ``(kind, draw)`` in ``defects`` (``draw(normal())`` gives the image and its mask)."""
    for i in range(n_train):
        normal().save(d / f"train/good/{i:03d}.png")
    for i in range(n_good):
        normal().save(d / f"test/good/{i:03d}.png")
    for kind, draw in defects:
        for i in range(n_each):
            img, m = draw(normal())
            img.save(d / f"test/{kind}/{i:03d}.png")
            m.save(d / f"ground_truth/{kind}/{i:03d}_mask.png")


def gravel(out: Path) -> None:
    rng = np.random.default_rng(0)
    H, W = 200, 300
    base = sd.gravel().astype(np.float32)
    tint = np.array([0.95, 0.80, 0.55], np.float32)

    def normal():
        y = rng.integers(0, base.shape[0] - H)
        x = rng.integers(0, base.shape[1] - W)
        g = base[y:y + H, x:x + W]
        if rng.random() < 0.5:
            g = g[:, ::-1]
        g = g * rng.uniform(0.9, 1.1) + rng.normal(0, 3, g.shape)
        return Image.fromarray(np.clip(g[..., None] * tint[None, None], 0, 255).astype(np.uint8))

    def scratch(img):
        m = Image.new("L", (W, H), 0)
        dm, di = ImageDraw.Draw(m), ImageDraw.Draw(img)
        x0, y0 = rng.integers(30, W - 30), rng.integers(30, H - 30)
        ang, length = rng.uniform(0, np.pi), rng.uniform(50, 110)
        x1 = np.clip(x0 + length * np.cos(ang), 5, W - 5)
        y1 = np.clip(y0 + length * np.sin(ang), 5, H - 5)
        w = int(rng.integers(3, 6))
        di.line([(x0, y0), (x1, y1)], fill=(30, 30, 40), width=w)
        dm.line([(x0, y0), (x1, y1)], fill=255, width=w)
        return img, m

    def spot(img):
        m = Image.new("L", (W, H), 0)
        dm, di = ImageDraw.Draw(m), ImageDraw.Draw(img)
        r = rng.integers(8, 16)
        cx, cy = rng.integers(r + 5, W - r - 5), rng.integers(r + 5, H - r - 5)
        box = [cx - r, cy - r, cx + r, cy + r]
        di.ellipse(box, fill=(170, 40, 30))
        dm.ellipse(box, fill=255)
        return img, m

    write_set(fresh(out / "gravel", ["scratch", "spot"]), normal, 40, 10,
              [("scratch", scratch), ("spot", spot)], 10)


def others(out: Path, root: Path) -> None:
    rng = np.random.default_rng(7)
    # KolektorSDD: 40 seeded training normals, the whole test split
    d = fresh(out / "ksdd40", ["defect"])
    tr = sorted((root / "kolektorsdd/train/good").glob("*.png"))
    for p in rng.choice(tr, 40, replace=False):
        shutil.copy(p, d / "train/good" / p.name)
    for sub in ["test/good", "test/defect", "ground_truth/defect"]:
        for p in (root / "kolektorsdd" / sub).glob("*.png"):
            shutil.copy(p, d / sub / p.name)
    # ELPV: 40 training normals, 60 test normals, 60 cells with probability >= 2/3
    from elpv_dataset.utils import load_dataset
    ims, probs, _ = load_dataset()
    ims, probs = np.asarray(ims, np.uint8), np.asarray(probs)
    d = fresh(out / "elpv40", ["bad"], masks=False)
    nrm = rng.permutation(np.flatnonzero(probs == 0))
    bad = rng.permutation(np.flatnonzero(probs >= 2 / 3))
    for i, j in enumerate(nrm[:40]):
        Image.fromarray(ims[j]).save(d / f"train/good/{i:03d}.png")
    for i, j in enumerate(nrm[40:100]):
        Image.fromarray(ims[j]).save(d / f"test/good/{i:03d}.png")
    for i, j in enumerate(bad[:60]):
        Image.fromarray(ims[j]).save(d / f"test/bad/{i:03d}.png")
    # brick: grayscale 256x256 crops, drawn cracks and blobs with masks
    base = sd.brick().astype(np.float32)
    H = W = 256

    def crop():
        y = rng.integers(0, base.shape[0] - H + 1)
        x = rng.integers(0, base.shape[1] - W + 1)
        g = base[y:y + H, x:x + W] * rng.uniform(0.9, 1.1) + rng.normal(0, 3, (H, W))
        return Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))

    def crack(img):
        m = Image.new("L", (W, H))
        dm, di = ImageDraw.Draw(m), ImageDraw.Draw(img)
        pts = [(int(rng.integers(30, W - 30)), int(rng.integers(30, H - 30)))]
        for _ in range(4):
            pts.append((int(np.clip(pts[-1][0] + rng.integers(-30, 31), 2, W - 2)),
                        int(np.clip(pts[-1][1] + rng.integers(-30, 31), 2, H - 2))))
        di.line(pts, fill=20, width=3)
        dm.line(pts, fill=255, width=3)
        return img, m

    def blob(img):
        m = Image.new("L", (W, H))
        dm, di = ImageDraw.Draw(m), ImageDraw.Draw(img)
        r = int(rng.integers(8, 18))
        cx, cy = int(rng.integers(r + 5, W - r - 5)), int(rng.integers(r + 5, H - r - 5))
        di.ellipse([cx - r, cy - r, cx + r, cy + r], fill=235)
        dm.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        return img, m

    write_set(fresh(out / "brick40", ["crack", "blob"]), crop, 40, 20,
              [("crack", crack), ("blob", blob)], 15)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    a = ap.parse_args()
    gravel(a.out)
    others(a.out, a.data_root)
    print("sets written to", a.out)
