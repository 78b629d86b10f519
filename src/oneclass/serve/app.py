"""The service's FastAPI application: the routes, the model behind its lock, and the page.
"""

import base64
import json
import logging
import math
import re
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError, NotAnImageError
from ..io import printable
from .guards import (
    API_KEY_HEADER,
    SHUTDOWN_MESSAGE,
    AccessLog,
    BodyGuard,
    HostGuard,
    KeyGuard,
    RequestBodyError,
    SafetyHeaders,
    _json_error,
)

log = logging.getLogger("oneclass.serve")
#: Room for the multipart envelope around the file when checking Content-Length.
_ENVELOPE = 64 * 1024
#: Pixel limit of ``oneclass serve`` unless --max-pixels or ONECLASS_MAX_PIXELS says otherwise:
#: an upload of about 100 KB can be a 6000x6000 PNG, which takes ~0.9 GB and seconds to score.
SERVE_MAX_PIXELS = 40_000_000
#: Part content types that say nothing about the data: decoded like images.
_GENERIC = ("application/octet-stream", "binary/octet-stream", "application/binary")
#: Seconds a client gets for its request headers, and again for its request body.
DEFAULT_TIMEOUT = 30.0
#: The largest upload limit accepted, in MB (1 TiB): larger byte counts overflow the reader.
MAX_UPLOAD_MB = 1024.0 * 1024.0


class ScoringError(Exception):
    """The model gave no usable answer for an image (a server-side error, 500)."""


class ShuttingDown(Exception):
    """The server stopped waiting for this request (its shutdown timeout): a 503."""


def _json_file(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (a run being written)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _last_json_line(path: Path) -> Any:
    """The last complete JSON line of ``path`` (a log a killed run may have cut short)."""
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


class Scorer:
    """A loaded run: scores one decoded image, renders its overlay."""

    def __init__(self, run: Path, device: str = "auto"):
        from ..export import loaded_model_id
        from ..runs import load_model, model_dir

        self.run = Path(run)
        self.stamp = self._model_stamp()  # before loading: a model replaced meanwhile shows
        self.det = load_model(self.run, device)
        self.model_id = loaded_model_id(self.det, model_dir(self.run))
        self.lock = threading.Lock()
        self.decoders = threading.BoundedSemaphore(self.DECODERS)
        #: Set when the server gives up on its requests (shutdown timeout): uploads still
        #: waiting for a decoder or for the model stop instead of scoring for no one.
        self.stopping = threading.Event()

    #: Uploads decoded and resized at once (the model itself runs one call at a time).
    DECODERS = 2

    def _model_stamp(self) -> tuple | None:
        """Names, sizes and times of the run's model files: they change when it is retrained."""
        from ..runs import model_dir

        try:
            return tuple((p.name, st.st_size, st.st_mtime_ns) for p in
                         sorted(model_dir(self.run).iterdir()) for st in [p.stat()])
        except OSError:
            return None

    def info(self) -> dict[str, Any]:
        """What ``GET /model`` shows: the served model, and what the run folder says of it.

        The run folder's training log and metrics are shown only while they are of the
        model being served: a run retrained (or evaluated with another model) since the
        service started would otherwise pair them with the old model's threshold and scores.
        """
        det = self.det
        changed = self._model_stamp() != self.stamp
        metrics = _json_file(self.run / "metrics.json")
        if not isinstance(metrics, dict) or metrics.get("model_id") != self.model_id:
            metrics = None
        return {"model_id": self.model_id, "method": det.name, "params": det.get_params(),
                "threshold": det.threshold_, "threshold_source": det.threshold_source_,
                "input_shape": list(det.input_shape_), "preprocess": det.preprocess_.to_json(),
                "n_train": det.n_train_, "train_seconds": det.train_seconds_,
                "run_changed": changed,
                "last_epoch": None if changed else _last_json_line(self.run / "train_log.jsonl"),
                "metrics": metrics}

    def predict_upload(self, data: bytes, name: str, heatmap: bool = False) -> dict[str, Any]:
        """Decode an uploaded file and score it (:meth:`predict`).

        Decoding and resizing run in the caller's thread, at most :attr:`DECODERS` at once:
        a small file can hold a very large image, and each one costs memory and CPU.
        """
        from ..data.images import read_image

        self._acquire(self.decoders)
        try:
            try:
                return self.predict(read_image(BytesIO(data), label=name), heatmap, name)
            except MemoryError:
                raise DataError(f"{name}: not enough memory to score this image; send a "
                                "smaller image") from None
        finally:
            self.decoders.release()

    def _acquire(self, lock) -> None:
        """Wait for ``lock`` (the model or a decoder), or raise :class:`ShuttingDown` once
        :attr:`stopping` is set."""
        while not lock.acquire(timeout=0.1):
            if self.stopping.is_set():
                raise ShuttingDown("the server is shutting down")

    def predict(self, image: np.ndarray, heatmap: bool = False,
                name: str = "upload") -> dict[str, Any]:
        """Score a uint8 ``(H, W, C)`` image; with ``heatmap`` add the overlay PNG (base64).

        A score that is not finite raises :class:`ScoringError` (the model, not the image).
        """
        from ..runs import image_notes
        from ..viz import FAST_PNG, image_overlay, to_png

        det = self.det
        t0 = time.perf_counter()
        x = det.preprocess_.image(image, name)[None].to(det.device_)
        self._acquire(self.lock)
        try:
            if heatmap:
                s, m = det._score_map(x)
                score, amap = float(s.float().cpu()[0]), m.detach().float().cpu().numpy()[0]
            else:
                with torch.no_grad():
                    score, amap = float(det._score(x).float().cpu()[0]), None
        finally:
            self.lock.release()
        if not math.isfinite(score):
            raise ScoringError(f"{name}: the model gave a score of {score} for this image; the "
                               "model file may be damaged or the image far outside its data")
        anomalous = score >= det.threshold_
        out: dict[str, Any] = {"score": score, "label": "anomalous" if anomalous else "normal",
                               "anomalous": bool(anomalous), "threshold": det.threshold_,
                               "model_id": self.model_id, "method": det.name}
        notes = image_notes(det, image)
        if notes:  # an image unlike the training images: the score may mislead
            out["warnings"] = notes
        if amap is not None:
            lo, hi = det.map_scale_ or (None, None)
            png = to_png(image_overlay(image, amap, lo, hi), FAST_PNG)
            out["overlay_png"] = base64.b64encode(png).decode("ascii")
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out


def create_app(run: str | Path, *, api_key: str | None = None, max_upload_mb: float = 20.0,
               device: str = "auto", scorer: Scorer | None = None,
               timeout: float = DEFAULT_TIMEOUT, access_log: bool = True,
               allowed_hosts=None):
    """The FastAPI application serving the model of ``run``.

    ``api_key``: None serves without a key; an empty or blank key is refused (ConfigError).
    ``allowed_hosts``: host names the ``Host`` header may give besides loopback addresses
    (None: any, no check); :func:`serve` passes :func:`serve_hosts` of its address.
    ``timeout``: seconds a client gets to send a request body (408 after that).
    ``access_log``: one INFO line per request on the logger ``oneclass.serve.access``.
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import ClientDisconnect

    check_api_key(api_key, "api_key", "pass None")
    if not 0 < max_upload_mb <= MAX_UPLOAD_MB:
        raise ConfigError(f"the upload limit must be above 0 and at most {MAX_UPLOAD_MB:g} MB "
                          f"(1 TiB), got {max_upload_mb:g}")
    scorer = scorer or Scorer(Path(run), device)
    limit = int(max_upload_mb * 1024 * 1024)
    app = FastAPI(title="oneclass", version=scorer.det.name, docs_url=None, redoc_url=None)
    app.state.scorer = scorer
    app.state.shutting_down = False  # set by the server of make_server when it stops

    def cancelled():
        # uvicorn cancels the requests still running when its shutdown timeout ends: the
        # uploads still waiting for the model give up too
        if app.state.shutting_down:
            scorer.stopping.set()

    error = _json_error

    @app.exception_handler(RequestBodyError)
    async def body_error(request: Request, exc: RequestBodyError):
        return error(exc.status, exc.message, close=True)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        # FastAPI's own errors (404, 405, ...) in the same {"error": ...} form as ours.
        response = error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}"
                         if exc.status_code in (404, 405) else str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow of a 405
        return response

    @app.exception_handler(ShuttingDown)
    async def shutting_down(request: Request, exc: ShuttingDown):
        return error(503, SHUTDOWN_MESSAGE, close=True)

    @app.exception_handler(ScoringError)
    async def scoring_error(request: Request, exc: ScoringError):
        log.error("%s", exc)
        return error(500, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # A bug or the environment: logged with its traceback, answered in JSON like the rest.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        what = "; ".join(f"{' '.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}"
                         for e in exc.errors())
        return error(422, f"invalid request ({what})")

    @app.get("/health")
    async def health():  # on the event loop: never queued behind uploads in the thread pool
        return {"status": "ok", "model_id": scorer.model_id}

    @app.get("/model")
    def model():
        return scorer.info()

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.replace("{{KEY_HEADER}}", API_KEY_HEADER)

    # HEAD wherever GET works (HTTP asks it; liveness probes send it); not in the schema,
    # where it would repeat the GET operations
    for path, endpoint, kind in (("/health", health, None), ("/model", model, None),
                                 ("/", page, HTMLResponse)):
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False,
                          **({"response_class": kind} if kind else {}))

    @app.post("/predict")
    async def predict(request: Request, heatmap: bool = False):
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            return error(415, f"send the image as multipart/form-data field 'file' (got "
                              f"{ctype or 'no content type'})")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit + _ENVELOPE:
            return error(413, f"upload of {int(length)} bytes is over the limit of {limit} bytes")
        try:
            form = await _parse_form(request, limit)
        except MultiPartException as exc:  # starlette's multipart parser errors, as 400
            if "exceeded maximum size" in str(exc.message):
                return error(413, f"upload is over the limit of {limit} bytes")
            return error(400, f"cannot parse the multipart upload ({exc.message})")
        except ClientDisconnect:
            return error(400, "the client disconnected before the upload was complete")
        except RequestBodyError:
            raise
        except Exception as exc:  # defensive: the parsers are not documented to raise only
            # the above (no test case reaches this line)
            return error(400, f"cannot parse the multipart upload ({exc})")
        try:
            return await _score_upload(form.get("file"), heatmap)
        finally:
            await form.close()

    async def _score_upload(upload, heatmap: bool):
        if isinstance(upload, str):
            return error(400, "the multipart field 'file' is not a file upload: its part has "
                              "no filename and no image content type; send the image as a "
                              "file, e.g. curl -F file=@image.png")
        if upload is None:
            return error(400, "no complete file in the multipart field 'file' (the field is "
                              "missing or the upload was cut short)")
        name = printable(upload.filename or "upload", 200)
        data = await upload.read(limit + 1)
        if len(data) > limit:
            return error(413, f"{name}: upload is over the limit of {limit} bytes")
        try:
            # Decoded by content: clients label parts loosely (none, octet-stream, IMAGE/PNG).
            return await run_in_threadpool(scorer.predict_upload, data, name, heatmap)
        except DataError as exc:
            declared = (upload.content_type or "").split(";")[0].strip().lower()
            if isinstance(exc, NotAnImageError) and declared \
                    and not declared.startswith("image/") and declared not in _GENERIC:
                return error(415, f"{name}: content type {declared!r} is not an image and the "
                                  "data is not a readable image (send image/png, image/jpeg, ...)")
            return error(400, str(exc))

    if api_key is not None:
        app.add_middleware(KeyGuard, api_key=api_key)
    app.add_middleware(BodyGuard, timeout=timeout, max_body=limit + _ENVELOPE)
    if allowed_hosts is not None:
        app.add_middleware(HostGuard, hosts=allowed_hosts)
    app.add_middleware(SafetyHeaders)
    # outermost: logs every answer, the 400s, 401s and 413s of the guards too
    app.add_middleware(AccessLog, enabled=access_log, on_cancel=cancelled)
    return app


def check_api_key(api_key: str | None, source: str = "the API key",
                  remedy: str = "leave it out") -> None:
    """Refuse an empty or blank key: it would let everyone in, as ``--api-key "$KEY"`` with
    KEY unset did (an empty key meant no key)."""
    if api_key is not None and not api_key.strip():
        raise ConfigError(f"{source} is empty: give a key, or {remedy} to serve without one")


async def _parse_form(request, limit: int):
    """The multipart form of ``request``: at most one file, eight fields, ``limit`` + 1 bytes
    a part. The ``file`` part counts as a file also without ``filename=`` when it has
    ``filename*=`` (RFC 5987, which RFC 7578 forbids and the parser ignores) or an image
    content type, as some HTTP clients send a file; a part with neither stays a text field,
    and so do other parts."""
    from contextlib import aclosing
    from urllib.parse import unquote

    from starlette.formparsers import MultiPartParser, parse_options_header

    class Parser(MultiPartParser):
        def on_headers_finished(self) -> None:
            part = self._current_part
            _, options = parse_options_header(part.content_disposition)
            name = None
            # only the upload's own field: another field with an image type stays a field
            # (counted as a file it would be a second one, refused as "too many files")
            if b"filename" not in options and options.get(b"name") == b"file":
                star = re.search(rb';\s*filename\*\s*=\s*"?([^;"]*)', part.content_disposition
                                 or b"", re.IGNORECASE)
                ctype = next((v for k, v in part.item_headers if k == b"content-type"), b"")
                if star:  # charset'language'percent-encoded
                    name = unquote(star.group(1).split(b"'")[-1].decode("latin-1"),
                                   errors="replace") or "upload"
                elif ctype.strip().lower().startswith(b"image/"):
                    name = "upload"
                if name is not None:
                    part.content_disposition += b'; filename=""'
            super().on_headers_finished()
            if name is not None and part.file is not None:
                part.file.filename = name

    async with aclosing(request.stream()) as stream:
        return await Parser(request.headers, stream, max_files=1, max_fields=8,
                            max_part_size=limit + 1).parse()


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
    <p class="err" id="warnings"></p>
    <img id="overlay" alt="anomaly heatmap overlay" src="data:image/png;base64,${j.overlay_png}">`;
  $("warnings").textContent = (j.warnings || []).join("; ");
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
