"""Deployment benchmarks: ``oneclass bench serve | export | predict``.

Each builds what it measures in a temporary folder: a small FCDD (and Deep SVDD) run trained
for one epoch on synthetic textures (speed does not depend on training), and synthetic PNG
images. Results go to ``OUT/<suite>.md`` and ``OUT/<suite>.json``.

- serve: ``oneclass serve`` in its own process on loopback; a closed-loop load of C concurrent
  clients in this process (C = 1 and 4), each sending the next request when the previous one
  is answered, for a fixed number of requests; requests/s, p50 / p99 latency, errors.
- export: onnxruntime vs torch images/s on the same model and batches, and the max abs
  difference of scores and maps.
- predict: ``oneclass predict`` in a child process over a folder of N images (heatmaps on);
  images/s and the child's peak resident memory, for two folder sizes to show that memory
  does not grow with the number of images.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .io import write_text

log = logging.getLogger(__name__)


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _train_run(tmp: Path, method: str, size: int, params: dict[str, Any]) -> Path:
    from .data.synthetic import write_mvtec
    from .runs import train

    data = write_mvtec(tmp / f"data{size}", n_train=48, n_test_good=4, n_test_defect=4,
                       size=size, channels=3, seed=0)
    run = tmp / f"{method}{size}"
    train(method, str(data), run, {"epochs": 1, "seed": 0, "size": size, **params},
          progress=False)
    return run


def _png_bytes(size: int, seed: int = 0) -> bytes:
    from .viz import to_png

    rng = np.random.default_rng(seed)
    return to_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def bench_serve(out: Path, requests: int = 400, clients=(1, 4), size: int = 256) -> list[dict]:
    import httpx

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        run = _train_run(tmp, "fcdd", size, {"batch_size": 16})
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "oneclass.cli", "serve", str(run), "--port", str(port)],
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        rows = []
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            else:
                raise RuntimeError("server did not start: " + server.stderr.read().decode()[-500:])
            body = _png_bytes(size)
            for heatmap in (False, True):
                for c in clients:
                    rows.append(_load(base, body, c, requests, heatmap))
                    log.info("serve %s", rows[-1])
        finally:
            server.terminate()
            server.wait(timeout=30)
    return rows


def _load(base: str, body: bytes, clients: int, total: int, heatmap: bool) -> dict:
    import httpx

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    left = [total]
    url = base + "/predict" + ("?heatmap=1" if heatmap else "")

    def worker():
        with httpx.Client(timeout=60) as cl:
            cl.post(url, files={"file": ("x.png", body, "image/png")})  # warm-up connection
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                t0 = time.perf_counter()
                try:
                    r = cl.post(url, files={"file": ("x.png", body, "image/png")})
                    ok = r.status_code == 200 and "score" in r.json()
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    errors[0] += 0 if ok else 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"endpoint": "/predict" + (" ?heatmap=1" if heatmap else ""), "clients": clients,
            "requests": len(lat), "errors": errors[0], "req/s": len(lat) / wall,
            "p50 ms": 1000 * _percentile(lat, 50), "p99 ms": 1000 * _percentile(lat, 99)}


def bench_export(out: Path, images: int = 128, batch: int = 16) -> list[dict]:
    import torch

    from .export import RawInput, export_onnx, parity, session
    from .runs import load_model

    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for method, size, params in [("fcdd", 256, {"batch_size": 16}),
                                     ("deep_svdd", 64, {"pretrain_epochs": 1})]:
            det = load_model(_train_run(tmp, method, size, params), "cpu")
            path = export_onnx(det, tmp / f"{method}.onnx")
            g = torch.Generator().manual_seed(0)
            x = torch.randint(0, 256, (images, *det.input_shape_), dtype=torch.uint8, generator=g)
            r = parity(det, path, x, batch_size=batch)
            # The same single-pass graph in torch (score and map from one forward), for a
            # like-for-like rate next to onnxruntime's.
            wrapper = RawInput(det.export_module()).eval()
            sess = session(path)
            onnx_rate = _rate(lambda xb, s=sess: s.run(None, {"image": xb.numpy()}), x, batch)

            def torch_graph(xb, w=wrapper):
                with torch.no_grad():
                    w(xb)

            rows.append({"model": f"{method} {size}x{size}x3", "batch": batch, "images": images,
                         "onnxruntime img/s": onnx_rate,
                         "torch same graph img/s": _rate(torch_graph, x, batch),
                         "torch score+anomaly_map img/s": r["torch_images_per_s"],
                         "score max abs diff": r["score_max_abs_diff"],
                         "map max abs diff": r["map_max_abs_diff"],
                         "map max": r["map_max"], "labels agree": r["labels_agree"]})
            log.info("export %s", rows[-1])
    return rows


def _rate(fn, x, batch: int) -> float:
    fn(x[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        fn(x[i:i + batch])
    return len(x) / (time.perf_counter() - t0)


def bench_predict(out: Path, counts=(2000, 10000), size: int = 64) -> list[dict]:
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        run = _train_run(tmp, "fcdd", size, {"batch_size": 16})
        rng = np.random.default_rng(0)
        folder = tmp / "images"
        made = 0
        for n in sorted(counts):
            for i in range(made, n):
                sub = folder / f"{i // 1000:03d}"
                sub.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    sub / f"{i:06d}.png")
            made = n
            dest = tmp / f"pred{n}"
            cmd = [sys.executable, "-c", _PREDICT_CHILD, str(run), str(folder), str(dest)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"images": n, "size": f"{size}x{size}x3", "heatmaps": True,
                         "img/s": n / child["seconds"], "seconds": child["seconds"],
                         "wall s (with start-up)": wall, "peak RSS MB": child["peak_rss_mb"],
                         "csv rows": child["rows"], "heatmap files": child["heatmaps"]})
            log.info("predict %s", rows[-1])
    return rows


_PREDICT_CHILD = """
import json, resource, sys, time
from pathlib import Path
from oneclass.runs import predict
run, folder, dest = sys.argv[1:4]
t0 = time.perf_counter()
r = predict(Path(run), [folder], Path(dest), progress=False, device="cpu")
secs = time.perf_counter() - t0
rows = sum(1 for _ in open(Path(dest) / "predictions.csv")) - 1
maps = sum(1 for _ in (Path(dest) / "heatmaps").iterdir())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": secs, "rows": rows, "heatmaps": maps, "peak_rss_mb": peak}))
"""


SUITES = {"serve": bench_serve, "export": bench_export, "predict": bench_predict}


def run(suite: str, out: Path) -> Path:
    """Run a deployment benchmark and write ``OUT/<suite>.md`` and ``.json``."""
    from .bench import machine
    from .speed import markdown

    rows = SUITES[suite](out)
    out = Path(out)
    write_text(out / f"{suite}.json", json.dumps({"machine": machine(), "rows": rows}, indent=1))
    path = write_text(out / f"{suite}.md", f"Machine: {machine()}\n\n{_table(rows, markdown)}")
    return path


def _table(rows: list[dict], markdown) -> str:
    fixed = [{k: (f"{v:.3g}" if isinstance(v, float) and abs(v) < 10 else v) for k, v in r.items()}
             for r in rows]
    return markdown(fixed)

