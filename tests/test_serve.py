"""The HTTP service (FastAPI TestClient) and its web page (headless Chromium)."""

from __future__ import annotations

import base64
import shutil
import socket
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

from oneclass.serve import API_KEY_HEADER, create_app  # noqa: E402

KEY = {API_KEY_HEADER: "s3cret"}
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def run_dir(mvtec_dir, tmp_path_factory):
    from oneclass.runs import train

    run = tmp_path_factory.mktemp("serve") / "run"
    train("fcdd", str(mvtec_dir), run, {"epochs": 1, "batch_size": 16, "seed": 0},
          progress=False)
    return run


@pytest.fixture(scope="module")
def app(run_dir):
    return create_app(run_dir, api_key="s3cret", max_upload_mb=0.05)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def _png(path: Path) -> bytes:
    return path.read_bytes()


def test_health_needs_no_key_and_model_does(client, run_dir):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert client.get("/model").status_code == 401
    assert client.get("/model", headers={API_KEY_HEADER: "wrong"}).status_code == 401
    m = client.get("/model", headers=KEY).json()
    assert m["method"] == "fcdd" and m["params"]["epochs"] == 1
    assert m["last_epoch"]["epoch"] == 1 and "loss" in m["last_epoch"]
    assert m["model_id"] == r.json()["model_id"] and len(m["model_id"]) == 12


def test_predict_matches_the_library_and_returns_an_overlay(client, app, mvtec_dir):
    import oneclass

    det = app.state.scorer.det
    test = oneclass.data.load(str(mvtec_dir), "test")
    path = Path(test.paths[-1])
    r = client.post("/predict?heatmap=1", headers=KEY,
                    files={"file": (path.name, _png(path), "image/png")})
    assert r.status_code == 200, r.text
    j = r.json()
    ref = float(det.score(test.subset([len(test) - 1]))[0])
    assert j["score"] == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert j["label"] == ("anomalous" if ref >= det.threshold_ else "normal")
    assert j["threshold"] == det.threshold_ and j["model_id"] == app.state.scorer.model_id
    img = Image.open(BytesIO(base64.b64decode(j["overlay_png"])))
    assert img.size == tuple(det.input_shape_[2:0:-1])
    plain = client.post("/predict", headers=KEY, files={"file": (path.name, _png(path), "image/png")})
    assert "overlay_png" not in plain.json()


def test_predict_needs_the_key(client, mvtec_dir):
    path = next((mvtec_dir / "test" / "good").iterdir())
    r = client.post("/predict", files={"file": (path.name, _png(path), "image/png")})
    assert r.status_code == 401 and API_KEY_HEADER in r.json()["error"]


def test_oversized_upload_is_413(client):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    buf = BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")  # ~120 KB, over the 50 KB limit
    r = client.post("/predict", headers=KEY, files={"file": ("big.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["error"]


@pytest.mark.parametrize("kwargs, status, message", [
    ({"files": {"file": ("a.txt", b"hello", "text/plain")}}, 415, "not an image"),
    ({"content": b"raw bytes", "headers": {"content-type": "image/png"}}, 415, "multipart"),
    ({"files": {"file": ("a.png", b"not a png at all", "image/png")}}, 400, "a.png: not a readable image"),
    ({"files": {"other": ("a.png", b"x", "image/png")}}, 400, "field 'file'"),
])
def test_bad_uploads_get_clear_errors(client, kwargs, status, message):
    headers = {**KEY, **kwargs.pop("headers", {})}
    r = client.post("/predict", headers=headers, **kwargs)
    assert r.status_code == status
    assert message in r.json()["error"]


def test_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'id="drop"' in r.text and API_KEY_HEADER in r.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"),
                    reason="Debian's chromium is not installed (apt-get install chromium)")
def test_web_page_end_to_end_in_headless_chromium(run_dir, mvtec_dir):
    sync_api = pytest.importorskip("playwright.sync_api")
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(run_dir, api_key="s3cret"), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        image = sorted((mvtec_dir / "test").glob("*/*.png"))[-1]
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists()
                                         else shutil.which("chromium"), headless=True,
                                         args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#key", "s3cret")
            page.dispatch_event("#key", "change")
            page.wait_for_selector("text=model: fcdd")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#overlay")
            score = float(page.inner_text("#score"))
            label = page.inner_text("#label")
            width = page.eval_on_selector("#overlay", "img => img.naturalWidth")
            browser.close()
        assert np.isfinite(score) and label in ("normal", "anomalous")
        assert width > 0  # the overlay PNG decoded in the browser
    finally:
        server.should_exit = True
        thread.join(timeout=10)
