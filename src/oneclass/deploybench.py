"""Deployment benchmarks: ``oneclass bench serve | export | predict``.

Each builds what it measures in a temporary folder: a small FCDD (and Deep SVDD) run trained
for one epoch on synthetic textures (speed does not depend on training), and synthetic PNG
images. Results go to ``OUT/<suite>.md`` and ``OUT/<suite>.json``.

- serve: ``oneclass serve`` in its own process on loopback; a closed-loop load of C concurrent
  clients in this process (C = 1 and 4), each sending the next request when the previous one
  is answered, for a fixed number of requests; requests/s, p50 / p99 latency, errors.
- soak: the same server and load client for a long mixed run (``requests``, 3000): good
  uploads with and without heatmap among uploads that must be refused (over the size limit,
  not an image, unreadable, broken multipart, wrong API key); every answer must have its
  expected status, and the server's resident memory is read from ``/proc`` every ``every``
  requests to show whether it grows. :func:`soak` runs it on an existing run directory.
- export: onnxruntime vs torch images/s on the same model and batches, and the max abs
  difference of scores and maps.
- predict: ``oneclass predict`` in a child process over a folder of N images (heatmaps on);
  images/s and the child's peak resident memory, for two folder sizes to show that memory
  does not grow with the number of images.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
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


@contextlib.contextmanager
def _server(run: Path, *args: str):
    """``oneclass serve RUN ARGS`` in a child process on a free loopback port:
    yields ``(base_url, pid)``; stopped on exit."""
    import httpx2 as httpx  # the client FastAPI's TestClient uses (dev extra)

    port = _free_port()
    with tempfile.TemporaryFile() as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "oneclass.cli", "serve", str(run), "--port", str(port), *args],
            env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                if server.poll() is not None:
                    break
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            else:
                server.kill()
            if server.poll() is not None:
                err.seek(0)
                raise RuntimeError("server did not start: " + err.read().decode()[-500:])
            yield base, server.pid
        finally:
            server.terminate()
            server.wait(timeout=30)


def bench_serve(out: Path, requests: int = 400, clients=(1, 4), size: int = 256) -> list[dict]:
    with tempfile.TemporaryDirectory() as td:
        run = _train_run(Path(td), "fcdd", size, {"batch_size": 16})
        rows = []
        with _server(run) as (base, _):
            body = _png_bytes(size)
            for heatmap in (False, True):
                for c in clients:
                    path = "/predict" + ("?heatmap=1" if heatmap else "")
                    row = _load(base, [(path, {"files": {"file": ("x.png", body, "image/png")}},
                                        200)], c, requests)
                    rows.append({"endpoint": "/predict" + (" ?heatmap=1" if heatmap else ""),
                                 "clients": c, **{k: row[k] for k in (
                                     "requests", "errors", "req/s", "p50 ms", "p99 ms")}})
                    log.info("serve %s", rows[-1])
    return rows


#: One request of a load: (path and query, keyword arguments of httpx's post, expected status).
Case = tuple[str, dict[str, Any], int]


def _load(base: str, cases: list[Case], clients: int, total: int,
          headers: dict[str, str] | None = None) -> dict:
    """``total`` requests from ``clients`` closed-loop clients, request i being
    ``cases[i % len(cases)]``; an error is an answer with another status than expected (or
    without ``score`` / ``error`` in its JSON), or no answer."""
    import httpx2 as httpx  # the client FastAPI's TestClient uses (dev extra)

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    lat: list[float] = []
    errors = [0]
    statuses: Counter = Counter()
    first_errors: list[str] = []
    lock = threading.Lock()
    sent = [0]

    def one(cl, case: Case) -> tuple[bool, str]:
        path, kwargs, expect = case
        try:
            r = cl.post(base + path, **kwargs)
            key = "score" if expect == 200 else "error"
            ok = r.status_code == expect and key in r.json()
            return ok, str(r.status_code) if ok else f"{path}: {r.status_code} {r.text[:200]}"
        except (httpx.HTTPError, ValueError) as exc:  # no answer, or not JSON
            return False, f"{path}: {type(exc).__name__}: {exc}"

    # the clock starts when every client has connected and sent its warm-up request
    ready = threading.Barrier(clients + 1)

    def worker():
        with httpx.Client(timeout=60, headers=headers) as cl:
            try:
                one(cl, cases[0])  # warm-up connection, neither timed nor counted
            finally:
                ready.wait()
            while True:
                with lock:
                    if sent[0] >= total:
                        return
                    i = sent[0]
                    sent[0] += 1
                t0 = time.perf_counter()
                ok, what = one(cl, cases[i % len(cases)])
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    statuses[what if ok else "error"] += 1
                    if not ok:
                        errors[0] += 1
                        if len(first_errors) < 5:
                            first_errors.append(what)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "errors": errors[0], "req/s": len(lat) / wall,
            "p50 ms": 1000 * _percentile(lat, 50), "p99 ms": 1000 * _percentile(lat, 99),
            "statuses": dict(statuses), "first_errors": first_errors, "seconds": wall}


def _proc_mb(pid: int, field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of a process in MB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def soak_cases(body: bytes, limit: int) -> list[Case]:
    """The request mix of the soak: 6 good uploads (3 with heatmap) and 5 to refuse."""
    png = {"files": {"file": ("x.png", body, "image/png")}}
    big = {"files": {"file": ("big.png", b"\x89PNG" + os.urandom(limit), "image/png")}}
    text = {"files": {"file": ("a.txt", b"hello", "text/plain")}}
    junk = {"files": {"file": ("a.png", b"not a png at all", "image/png")}}
    broken = {"content": b"--other\r\nno headers, no end",
              "headers": {"content-type": "multipart/form-data; boundary=xyz"}}
    wrong_key = {**png, "headers": {"X-API-Key": "wrong"}}
    return [("/predict", png, 200), ("/predict?heatmap=1", png, 200), ("/predict", big, 413),
            ("/predict", png, 200), ("/predict?heatmap=1", png, 200), ("/predict", text, 415),
            ("/predict", png, 200), ("/predict?heatmap=1", png, 200), ("/predict", junk, 400),
            ("/predict", broken, 400), ("/predict", wrong_key, 401)]


def soak(run: Path, requests: int = 3000, clients: int = 2, every: int = 250,
         size: int = 64, max_upload_mb: float = 0.25) -> dict[str, Any]:
    """A long mixed load on ``oneclass serve RUN`` in a child process (see the module
    docstring); the server's RSS before the first request and after every ``every``."""
    if min(requests, clients, every) < 1:  # else no batch sends anything: an endless loop
        raise ValueError(f"soak: requests, clients and every must be >= 1, got {requests}, "
                         f"{clients}, {every}")
    key = "soak-key"
    limit = int(max_upload_mb * 1024 * 1024)
    cases = soak_cases(_png_bytes(size), limit)
    with _server(Path(run), "--api-key", key, "--max-upload-mb", str(max_upload_mb),
                 "--device", "cpu") as (base, pid):
        samples = [{"requests": 0, "errors": 0, "rss_mb": _proc_mb(pid, "VmRSS")}]
        statuses: Counter = Counter()
        first_errors: list[str] = []
        done = errors = 0
        t0 = time.perf_counter()
        while done < requests:
            n = min(every, requests - done)
            r = _load(base, cases, clients, n, headers={"X-API-Key": key})
            done += r["requests"]
            errors += r["errors"]
            statuses.update(r["statuses"])
            first_errors += r["first_errors"][:5 - len(first_errors)]
            samples.append({"requests": done, "errors": errors,
                            "rss_mb": _proc_mb(pid, "VmRSS"), "p99_ms": r["p99 ms"]})
            log.info("soak %s", samples[-1])
        seconds = time.perf_counter() - t0
        peak = _proc_mb(pid, "VmHWM")
    return {"requests": done, "errors": errors, "clients": clients, "seconds": seconds,
            "statuses": dict(sorted(statuses.items())), "first_errors": first_errors,
            "samples": samples, "peak_rss_mb": peak}


def bench_soak(out: Path, requests: int = 3000, clients: int = 2, every: int = 250,
               size: int = 64) -> list[dict]:
    with tempfile.TemporaryDirectory() as td:
        run = _train_run(Path(td), "fcdd", size, {"batch_size": 16})
        r = soak(run, requests=requests, clients=clients, every=every, size=size)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_text(Path(out) / "soak-summary.json", json.dumps(r, indent=1))
    first = r["samples"][1]["rss_mb"] if len(r["samples"]) > 1 else float("nan")
    log.info("soak: %d requests in %.0f s, %d errors, statuses %s, RSS after the first %d: "
             "%.1f MB, at the end: %.1f MB, peak %.1f MB", r["requests"], r["seconds"],
             r["errors"], r["statuses"], every, first, r["samples"][-1]["rss_mb"],
             r["peak_rss_mb"])
    return [{"requests": s["requests"], "errors": s["errors"],
             "server RSS MB": round(s["rss_mb"], 1), "p99 ms": round(s.get("p99_ms", float("nan")), 1)}
            for s in r["samples"]]


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
            path = export_onnx(det, tmp / f"{method}.onnx", input_dtype="uint8")  # as recorded
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


SUITES = {"serve": bench_serve, "export": bench_export, "predict": bench_predict,
          "soak": bench_soak}


def run(suite: str, out: Path, **params: Any) -> Path:
    """Run a deployment benchmark and write ``OUT/<suite>.md`` and ``.json``; ``params``
    (integers, e.g. ``requests=3000`` from ``--set``) go to the suite's function."""
    import inspect

    from .bench import machine
    from .errors import ConfigError
    from .speed import markdown

    fn = SUITES[suite]
    known = [p for p in inspect.signature(fn).parameters if p != "out"]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"bench {suite}: unknown parameter(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(known)}")
    defaults = {p.name: p.default for p in inspect.signature(fn).parameters.values()}
    params = {k: _positive(suite, k, v, isinstance(defaults[k], tuple))
              for k, v in params.items()}
    rows = fn(out, **params)
    out = Path(out)
    write_text(out / f"{suite}.json", json.dumps({"machine": machine(), "rows": rows}, indent=1))
    path = write_text(out / f"{suite}.md", f"Machine: {machine()}\n\n{_table(rows, markdown)}")
    return path


def _positive(suite: str, name: str, value: Any, many: bool) -> int | tuple[int, ...]:
    """A ``--set`` value of a deployment benchmark: a whole number >= 1, or for a parameter
    that takes several (``clients``, ``counts``) one or a list of them; checked before any
    work starts."""
    from .errors import ConfigError

    values = value if many and isinstance(value, (list, tuple)) else [value]
    ok = bool(values) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                              for v in values)
    if not ok:
        what = "a whole number >= 1 or a list of them" if many else "a whole number >= 1"
        raise ConfigError(f"bench {suite}: {name} must be {what}, got {value!r}")
    out = tuple(int(v) for v in values)
    return out if many else out[0]


def _table(rows: list[dict], markdown) -> str:
    fixed = [{k: (f"{v:.3g}" if isinstance(v, float) and abs(v) < 10 else v) for k, v in r.items()}
             for r in rows]
    return markdown(fixed)

