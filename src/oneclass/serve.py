"""The HTTP inspection service: ``oneclass serve RUN``.

Routes (JSON unless said otherwise):

- ``GET /health``: liveness, never needs the API key;
- ``GET /model``: method, parameters, threshold, input size and the metrics of ``oneclass
  eval`` when the run has them;
- ``POST /predict``: one image as the multipart field ``file``; returns score, label,
  threshold and model id, plus the heatmap overlay as a base64 PNG with ``?heatmap=1``.
  Uploads over the size limit get 413, non-image uploads 415, undecodable images 400;
- ``GET /``: a page to drop an image on and see its score and overlay.

With an API key every route but ``/health`` and the page itself wants the header
``X-API-Key``. The page is static HTML without any model information (a browser cannot send
a header when it navigates), so it asks for the key and sends it with its requests.

FastAPI on uvicorn: the upload parsing, the TestClient for in-process tests, and a server
that is the usual choice for Python model services. One model call runs at a time (a lock):
on a few CPU cores concurrent torch calls only compete for the same cores.
"""


import base64
import hmac
import json
import logging
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
#: Room for the multipart envelope around the file when checking Content-Length.
_ENVELOPE = 64 * 1024


class Scorer:
    """A loaded run: scores one decoded image, renders its overlay."""

    def __init__(self, run: Path, device: str = "auto"):
        from .export import model_id
        from .runs import load_model, model_dir

        self.run = Path(run)
        self.det = load_model(self.run, device)
        self.model_id = model_id(model_dir(self.run))
        self.lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        det = self.det
        metrics_path = self.run / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        log_path = self.run / "train_log.jsonl"
        last = log_path.read_text().strip().splitlines()[-1:] if log_path.is_file() else []
        return {"model_id": self.model_id, "method": det.name, "params": det.get_params(),
                "threshold": det.threshold_, "threshold_source": det.threshold_source_,
                "input_shape": list(det.input_shape_), "preprocess": det.preprocess_.to_json(),
                "n_train": det.n_train_, "train_seconds": det.train_seconds_,
                "last_epoch": json.loads(last[0]) if last else None, "metrics": metrics}

    def predict(self, image: np.ndarray, heatmap: bool = False) -> dict[str, Any]:
        """Score a uint8 ``(H, W, C)`` image; with ``heatmap`` add the overlay PNG (base64)."""
        from .runs import _to_uint8_image
        from .viz import overlay, to_png

        det = self.det
        t0 = time.perf_counter()
        x = det.preprocess_.image(image, "upload")[None].to(det.device_)
        with self.lock:
            if heatmap:
                s, m = det._score_map(x)
                score, amap = float(s.float().cpu()[0]), m.detach().float().cpu().numpy()[0]
            else:
                with torch.no_grad():
                    score, amap = float(det._score(x).float().cpu()[0]), None
        anomalous = score >= det.threshold_
        out: dict[str, Any] = {"score": score, "label": "anomalous" if anomalous else "normal",
                               "anomalous": bool(anomalous), "threshold": det.threshold_,
                               "model_id": self.model_id, "method": det.name}
        if amap is not None:
            lo, hi = det.map_scale_ or (None, None)
            png = to_png(overlay(_to_uint8_image(x[0]), amap, lo, hi))
            out["overlay_png"] = base64.b64encode(png).decode("ascii")
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out


def create_app(run: str | Path, *, api_key: str | None = None, max_upload_mb: float = 20.0,
               device: str = "auto", scorer: Scorer | None = None):
    """The FastAPI application serving the model of ``run``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    from .data.images import read_image

    scorer = scorer or Scorer(Path(run), device)
    limit = int(max_upload_mb * 1024 * 1024)
    app = FastAPI(title="oneclass", version=scorer.det.name, docs_url=None, redoc_url=None)
    app.state.scorer = scorer

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path not in ("/health", "/"):
            given = request.headers.get(API_KEY_HEADER, "")
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return error(401, f"missing or wrong API key (header {API_KEY_HEADER})")
        return await call_next(request)

    @app.get("/health")
    def health():
        return {"status": "ok", "model_id": scorer.model_id}

    @app.get("/model")
    def model():
        return scorer.info()

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.replace("{{KEY_HEADER}}", API_KEY_HEADER)

    @app.post("/predict")
    async def predict(request: Request, heatmap: bool = False):
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return error(415, f"send the image as multipart/form-data field 'file' (got "
                              f"{ctype or 'no content type'})")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit + _ENVELOPE:
            return error(413, f"upload of {int(length)} bytes is over the limit of {limit} bytes")
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=limit + 1)
        except Exception as exc:  # starlette raises its own parser errors
            if "maximum" in str(exc).lower() or "exceed" in str(exc).lower():
                return error(413, f"upload is over the limit of {limit} bytes")
            return error(400, f"cannot parse the multipart upload ({exc})")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return error(400, "no file in the multipart field 'file'")
        if not (upload.content_type or "").startswith(("image/", "application/octet-stream")):
            return error(415, f"{upload.filename}: content type {upload.content_type!r} is not an "
                              "image (send image/png, image/jpeg, ...)")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            return error(413, f"{upload.filename}: upload is over the limit of {limit} bytes")
        try:
            img = read_image(BytesIO(data), label=upload.filename or "upload")
            return await run_in_threadpool(scorer.predict, img, heatmap)
        except DataError as exc:
            return error(400, str(exc))

    return app


def serve(run: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_upload_mb: float = 20.0, device: str = "auto") -> None:
    """Run the service until interrupted."""
    import uvicorn

    app = create_app(run, api_key=api_key, max_upload_mb=max_upload_mb, device=device)
    log.info("serving %s (%s) on http://%s:%d", run, app.state.scorer.det.name, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>oneclass inspection</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}
#drop{border:2px dashed #888;border-radius:8px;padding:2.5rem;text-align:center;cursor:pointer}
#drop.over{background:#eef}
#result{margin-top:1.5rem}
.anomalous{color:#b00;font-weight:bold}.normal{color:#070;font-weight:bold}
img{max-width:100%;image-rendering:pixelated;border:1px solid #ccc;min-width:256px}
.err{color:#b00}
</style></head>
<body>
<h1>oneclass inspection</h1>
<p id="model">model: loading...</p>
<p><label>API key (if the service needs one): <input id="key" type="password"></label></p>
<div id="drop">Drop an image here, or click to choose one
<input id="file" type="file" accept="image/*" hidden></div>
<div id="result"></div>
<script>
const KEY = "{{KEY_HEADER}}";
const $ = (id) => document.getElementById(id);
function headers() { const k = $("key").value; return k ? {[KEY]: k} : {}; }
async function loadModel() {
  const r = await fetch("/model", {headers: headers()});
  if (!r.ok) { $("model").textContent = "model: " + (await r.json()).error; return; }
  const m = await r.json();
  $("model").textContent =
    `model: ${m.method} (${m.model_id}), threshold ${m.threshold.toPrecision(4)}`;
}
async function send(file) {
  const body = new FormData(); body.append("file", file);
  $("result").textContent = "scoring " + file.name + "...";
  const r = await fetch("/predict?heatmap=1", {method: "POST", body, headers: headers()});
  const j = await r.json();
  if (!r.ok) {
    $("result").innerHTML = `<p class="err" id="error"></p>`;
    $("error").textContent = j.error; return;
  }
  $("result").innerHTML = `<p>score <span id="score">${j.score.toPrecision(5)}</span>:
    <span id="label" class="${j.label}">${j.label}</span>
    (threshold ${j.threshold.toPrecision(5)})</p>
    <img id="overlay" alt="anomaly heatmap overlay" src="data:image/png;base64,${j.overlay_png}">`;
}
const drop = $("drop");
drop.onclick = () => $("file").click();
$("file").onchange = (e) => e.target.files.length && send(e.target.files[0]);
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]); };
$("key").onchange = loadModel;
loadModel();
</script>
</body></html>
"""
