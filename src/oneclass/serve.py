"""The HTTP inspection service: ``oneclass serve RUN``.

Routes (JSON unless said otherwise):

- ``GET /health``: liveness, never needs the API key;
- ``GET /model``: method, parameters, threshold, input size and the metrics of ``oneclass
  eval`` when the run has them for the served model (``run_changed`` is true, and the run
  folder's log and metrics are left out, once the run was retrained since the start);
- ``POST /predict``: one image as the multipart field ``file`` (a file part: with a
  ``filename``, a ``filename*`` or an image content type); returns score, label,
  threshold and model id, plus the heatmap overlay as a base64 PNG with ``?heatmap=1``.
  Uploads over the size limit get 413; a file that is not a readable image gets 400, or 415
  when its part declares a type that is not an image. The content decides, not the label: a
  PNG sent without a content type, or as ``application/octet-stream``, is scored;
- ``GET /``: a page to drop an image on and see its score and overlay.

With an API key every route but ``/health`` and the page itself wants the header
``X-API-Key``. The page is static HTML without any model information (a browser cannot send
a header when it navigates), so it asks for the key and sends it with its requests.

Slow and hostile clients: a client has ``timeout`` seconds (30) to send its request line and
headers (from connecting, or from the start of its next request on a kept-alive connection)
and another ``timeout`` seconds for the whole body; past that it gets 408 and the connection
is closed. Request bodies are counted as they arrive, so an upload over the limit is refused
with 413 after at most the limit has been read, with or without a Content-Length. A response
sent before the request body was read in full (401, 413, 415, ...) closes the connection, so
a client cannot keep streaming into it. At most ``max_connections`` (64) connections are
served at once; more get 503. Uploads are decoded in worker threads, at most two at once,
and ``oneclass serve`` refuses images over 40 megapixels unless told otherwise. Every error,
including a request line or header that is not HTTP, an unexpected failure (500, logged with
its traceback) and a score that is not finite (500), is a JSON object ``{"error": "..."}``.

Logging and stopping: one access-log line per request at INFO on ``oneclass.serve.access``
(method, path, status, milliseconds, client; never a header or the body). The first SIGTERM
or SIGINT logs one line and lets the requests in flight finish for ``shutdown_timeout``
seconds (25), then answers the rest 503; a second one ends the process at once, by that
signal (see :func:`make_server`).

FastAPI on uvicorn: the upload parsing, the TestClient for in-process tests, and a server
that is the usual choice for Python model services. One model call runs at a time (a lock):
on a few CPU cores concurrent torch calls only compete for the same cores.
"""


import asyncio
import base64
import hmac
import json
import logging
import math
import re
import signal
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, DataError, NotAnImageError, OneclassError
from .io import printable

log = logging.getLogger(__name__)
#: One line per request at INFO (``oneclass serve --no-access-log`` leaves it out).
access_log = logging.getLogger(__name__ + ".access")

API_KEY_HEADER = "X-API-Key"
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
#: Connections open at once; one more gets 503.
DEFAULT_MAX_CONNECTIONS = 64
#: Seconds a shutdown (SIGTERM, Ctrl-C) waits for the requests in flight; the ones still
#: running then get 503. Under the 30 s Kubernetes gives a pod between SIGTERM and SIGKILL
#: (systemd: 90 s), so they are answered and the process ends before it is killed.
DEFAULT_SHUTDOWN_TIMEOUT = 25.0


class ScoringError(Exception):
    """The model gave no usable answer for an image (a server-side error, 500)."""


#: The 503 of a request the server stopped waiting for when it shut down.
SHUTDOWN_MESSAGE = ("the server is shutting down and did not finish this request in time; "
                    "send it again")


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


class RequestBodyError(Exception):
    """The request body came too slowly (408) or is too large (413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _json_error(status: int, message: str, close: bool = False):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status,
                        headers={"Connection": "close"} if close else None)


class BodyGuard:
    """ASGI middleware: a deadline for the whole request body and a cap on its size.

    The body is pulled by whoever reads it (the multipart parser of ``/predict``); each pull
    waits at most until ``timeout`` seconds after the request started, and the bytes are
    counted as they come, so neither a trickle nor an endless chunked upload can hold the
    request or fill memory or disk. Raises :class:`RequestBodyError` inside the route, which
    the app turns into a JSON 408 / 413. A response that starts before the body was read to
    its end gets ``Connection: close``.
    """

    def __init__(self, app, timeout: float, max_body: int):
        self.app, self.timeout, self.max_body = app, float(timeout), int(max_body)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        headers = dict(scope["headers"])
        has_body = (headers.get(b"content-length", b"0") != b"0"
                    or b"transfer-encoding" in headers)
        state = {"read": 0, "done": not has_body}

        async def guarded_receive():
            if state["done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise RequestBodyError(
                    408, f"the request body did not arrive within {self.timeout:g} s "
                         f"(read {state['read']} bytes)") from None
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.max_body:
                    state["done"] = True
                    raise RequestBodyError(413, f"request body is over the limit of "
                                                f"{self.max_body} bytes")
                state["done"] = not message.get("more_body", False)
            else:  # http.disconnect
                state["done"] = True
            return message

        async def closing_send(message):
            if message["type"] == "http.response.start" and not state["done"]:
                given = list(message.get("headers", []))
                if not any(k.lower() == b"connection" for k, _ in given):
                    message = {**message, "headers": [*given, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, guarded_receive, closing_send)


def _client(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _printable(raw: bytes, limit: int = 200) -> str:
    """A request path for the log: control and non-ASCII bytes escaped (no forged lines)."""
    text = "".join(chr(b) if 32 < b < 127 else f"\\x{b:02x}" for b in raw[:limit])
    return text + ("..." if len(raw) > limit else "")


def log_access(method: str, path: str, status: int | str, seconds: float, client: str) -> None:
    """The access-log line of one request: never its headers (the API key) or body."""
    access_log.info("%s %s %s %.0f ms %s", method, path, status, seconds * 1000, client)


class AccessLog:
    """ASGI middleware (outermost): one access-log line per request, and a JSON 503 for a
    request the server stopped waiting for when it shut down.

    A request still running when the shutdown timeout ends is cancelled by uvicorn; without
    this, uvicorn logs the CancelledError's traceback and answers a text/plain 500.
    """

    def __init__(self, app, enabled: bool = True, on_cancel=None):
        self.app, self.enabled, self.on_cancel = app, enabled, on_cancel

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state: dict[str, Any] = {"status": None}

        async def recording_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except asyncio.CancelledError:
            if self.on_cancel is not None:
                self.on_cancel()
            if state["status"] is not None:
                raise  # an answer is under way: the connection is closed as it is
            state["status"] = 503
            await _json_error(503, SHUTDOWN_MESSAGE, close=True)(scope, receive, send)
        finally:
            if self.enabled:
                log_access(scope["method"], _printable(scope.get("raw_path") or
                                                       scope["path"].encode()),
                           state["status"] or "-", time.perf_counter() - t0, _client(scope))


class Scorer:
    """A loaded run: scores one decoded image, renders its overlay."""

    def __init__(self, run: Path, device: str = "auto"):
        from .export import loaded_model_id
        from .runs import load_model, model_dir

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
        from .runs import model_dir

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
        from .data.images import read_image

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
        from .runs import image_notes
        from .viz import FAST_PNG, image_overlay, to_png

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


class KeyGuard:
    """ASGI middleware: every path but ``/health`` and ``/`` needs the header ``X-API-Key``.

    Checked before routing, so unknown paths are refused alike, and before the body is read.
    The comparison takes the same time wherever the given key differs (``hmac``).
    """

    OPEN = ("/health", "/")

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self.OPEN:
            name = API_KEY_HEADER.lower().encode()
            given = next((v for k, v in scope["headers"] if k.lower() == name), b"")
            if not hmac.compare_digest(given, self.key):
                response = _json_error(401, f"missing or wrong API key (header {API_KEY_HEADER})")
                # a 401 names its scheme (RFC 9110); ours is the key in that header
                response.headers["WWW-Authenticate"] = f'ApiKey header="{API_KEY_HEADER}"'
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


#: Host names a service bound to a loopback address answers to (any port).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether the bind address ``host`` is reachable from this machine only."""
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(raw: bytes) -> str:
    """The host of a ``Host`` header, without its port or a final dot: ``[::1]:8000`` ->
    ``::1``, ``LocalHost.:80`` -> ``localhost``."""
    text = raw.decode("latin-1").strip().lower()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        text = text.rsplit(":", 1)[0]
    return text.rstrip(".") if text not in ("", ".") else text


class HostGuard:
    """ASGI middleware: requests whose ``Host`` header names another host get 400.

    A service on a loopback address is reachable from this machine's browser: a web page
    whose domain is rebound to 127.0.0.1 (DNS rebinding) could otherwise read ``/model`` and
    send images to ``/predict`` from the user's browser; such requests carry the page's
    domain as their host. Loopback IP addresses (``127.0.0.2``, ``0:0:0:0:0:0:0:1``) and a
    request without a ``Host`` (HTTP/1.0, never a browser) pass. Checked before anything
    else, the API key too.
    """

    def __init__(self, app, hosts):
        self.app, self.hosts = app, {_host_name(h.encode("latin-1")) for h in hosts}

    def allows(self, given: bytes | None) -> bool:
        if given is None:
            return True
        name = _host_name(given)
        return name in self.hosts or is_loopback(name)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k.lower() == b"host"), None)
            if not self.allows(given):
                response = _json_error(400, "invalid Host header: this service answers to "
                                            f"{', '.join(sorted(self.hosts))} only", close=True)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SafetyHeaders:
    """ASGI middleware: every response says not to sniff its type and not to be framed by
    another site's page (the upload page's buttons cannot be overlaid: clickjacking)."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"content-security-policy", b"frame-ancestors 'none'")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


def serve_hosts(host: str, extra=()) -> tuple[str, ...] | None:
    """The ``Host`` names a service bound to ``host`` answers to (None: any): on a loopback
    address, the loopback names, ``host`` itself and ``extra`` (``"*"`` in it: any)."""
    if not is_loopback(host) or "*" in extra:
        return None
    return (*LOOPBACK_HOSTS, host, *extra)


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


def _protocol(timeout: float, max_connections: int | None = None, access: bool = True):
    """uvicorn's h11 protocol (a subclass: it relies on uvicorn's ``H11Protocol`` internals,
    tested with uvicorn 0.54) with a deadline for the request line and headers.

    uvicorn times out idle kept-alive connections only after a response; a client that
    connects and sends nothing, or its headers a byte at a time, is otherwise held for ever.
    Here the clock starts when the connection opens and again when a new request begins, and
    stops when the headers are complete; past ``timeout`` the client gets 408 and is
    disconnected. A client that stops reading its responses is disconnected once the
    server's write buffer has been full for ``timeout``. A connection beyond
    ``max_connections`` gets 503 at once. uvicorn's plain-text 400 for unparseable requests
    becomes JSON too. With ``access``, each of these answers gets an access-log line.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    def raw_response(status: int, reason: str, message: str) -> bytes:
        body = json.dumps({"error": message}).encode()
        return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body

    class GuardedH11Protocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None
        write_timer: asyncio.TimerHandle | None = None
        protocol_error = ""

        def _refuse(self, status: int, reason: str, message: str) -> None:
            """Answer ``status`` before any request reached the app, and close."""
            self.transport.write(raw_response(status, reason, message))
            self.transport.close()
            if access:  # no request line to show (none, or not HTTP)
                peer = self.transport.get_extra_info("peername")
                log_access("-", "-", status, 0.0, f"{peer[0]}:{peer[1]}" if peer else "-")

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if max_connections and len(self.connections) > max_connections:
                self._refuse(503, "Service Unavailable",
                             f"the server has {max_connections} connections open; try again "
                             "later")
                return
            self._arm()
            next_event = self.conn.next_event

            def remember_error():  # uvicorn drops h11's reason; keep it for the answer
                try:
                    return next_event()
                except h11.RemoteProtocolError as exc:
                    self.protocol_error = str(exc)
                    raise

            self.conn.next_event = remember_error

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()  # a request has begun (or the connection is new): headers pending
            else:
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self.write_timer is not None:
                self.write_timer.cancel()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            # The client does not read what it asked for (pipelined requests it never reads,
            # say): give up on it after ``timeout`` instead of holding the response for ever.
            super().pause_writing()
            if self.write_timer is None:
                self.write_timer = self.loop.call_later(timeout, self._abort_stalled)

        def _abort_stalled(self) -> None:
            """Drop a client that has not read for ``timeout``, with a reset: a plain close
            would queue a FIN behind the unsent responses, and the kernel would keep them
            (up to its send buffer, megabytes) for as long as the client does not read."""
            import socket
            import struct

            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:  # linger 0: close discards what is unsent and resets the connection
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self.transport.abort()

        def resume_writing(self) -> None:
            super().resume_writing()
            if self.write_timer is not None:
                self.write_timer.cancel()
                self.write_timer = None

        def on_response_complete(self) -> None:
            self._disarm()  # between requests uvicorn's keep-alive timeout applies
            super().on_response_complete()

        def _arm(self) -> None:
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            self._refuse(408, "Request Timeout",
                         f"the request headers did not arrive within {timeout:g} s")

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            why = (self.protocol_error or msg.rstrip("."))[:200]
            self._refuse(400, "Bad Request", f"not a valid HTTP request ({why})")

    return GuardedH11Protocol


def make_server(app, *, host: str = "127.0.0.1", port: int = 8000,
                timeout: float = DEFAULT_TIMEOUT,
                max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
                shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, access_log: bool = True):
    """A ``uvicorn.Server`` for ``app`` with the deadlines and the connection limit of
    ``oneclass serve`` (``server.run()`` serves until ``should_exit``).

    Stopping: the first SIGTERM or SIGINT logs one line and stops taking connections; the
    requests in flight get ``shutdown_timeout`` seconds to finish, then 503. A second signal
    ends the process at once, by that signal (see :class:`_Server`).
    """
    import uvicorn

    # access_log=False: uvicorn's own access lines stay off whatever the logging setup
    # (ours come from AccessLog and the protocol)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            http=_protocol(timeout, max_connections, access_log),
                            timeout_keep_alive=min(5, timeout), access_log=False,
                            timeout_graceful_shutdown=shutdown_timeout)
    logging.getLogger("uvicorn.error").addFilter(_CUT_OFF)  # once: a filter is added once
    server = _server_class()(config)
    server.app_state = getattr(app, "state", None)
    return server


class _CutOff(logging.Filter):
    """uvicorn's ERROR line of a shutdown timeout ("Cancel 3 running task(s), ...") as one
    of ours that says what the clients got."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Cancel %s running task"):
            log.warning("shutdown timeout reached: %s request(s) still running get 503",
                        *record.args)
            return False
        return True


_CUT_OFF = _CutOff()


def _server_class():
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn's server with oneclass's stop: a log line, and a second signal that ends
        the process at once.

        uvicorn forces its shutdown on a second SIGINT only, and then cancels the requests
        still running, which answer text/plain 500s and log their tracebacks; a second
        SIGTERM does nothing. Here a second SIGINT or SIGTERM logs one line and kills the
        process with that signal (default action): clients see their connection closed.
        """

        app_state = None  # the app's state, told when the server stops

        async def shutdown(self, sockets=None) -> None:
            if self.app_state is not None:
                self.app_state.shutting_down = True
            await super().shutdown(sockets)
            # uvicorn cancels the requests still running at the timeout without waiting for
            # them: give them a moment to answer their 503 (an upload still arriving too),
            # or the process ends first and they get a closed connection
            cut = [t for t in self.server_state.tasks if not t.done()]
            if cut:
                await asyncio.wait(cut, timeout=2.0)

        def handle_exit(self, sig: int, frame) -> None:
            name = signal.Signals(sig).name
            n = len(self.server_state.tasks)
            if self.should_exit:
                log.warning("%s again: stopping now; %d request(s) in flight get no answer",
                            name, n)
                for handler in logging.getLogger().handlers + log.handlers:
                    handler.flush()
                signal.signal(sig, signal.SIG_DFL)
                signal.raise_signal(sig)
                return
            if n:
                log.warning("%s: shutting down; waiting up to %g s for %d request(s) in "
                            "flight (another %s stops at once)", name,
                            self.config.timeout_graceful_shutdown, n,
                            "Ctrl-C" if sig == signal.SIGINT else "signal")
            else:
                log.warning("%s: shutting down (no requests in flight)", name)
            super().handle_exit(sig, frame)

    return _Server


def serve(run: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_upload_mb: float = 20.0, device: str = "auto",
          timeout: float = DEFAULT_TIMEOUT,
          max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
          shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, access_log: bool = True,
          allowed_hosts=()) -> None:
    """Run the service until interrupted (SIGINT, SIGTERM; see :func:`make_server`).
    ``allowed_hosts``: more ``Host`` names to answer on a loopback address (see
    :func:`serve_hosts`)."""
    app = create_app(run, api_key=api_key, max_upload_mb=max_upload_mb, device=device,
                     timeout=timeout, access_log=access_log,
                     allowed_hosts=serve_hosts(host, tuple(allowed_hosts or ())))
    sock = _listen(host, port)  # before saying "serving": a port in use is our error
    port = sock.getsockname()[1]  # port 0: the one the system chose
    log.info("serving %s (%s) on http://%s:%d; %s", run, app.state.scorer.det.name, host, port,
             f"requests need the {API_KEY_HEADER} header (all but /health and /)"
             if api_key is not None else "no API key: open to anyone who can connect")
    make_server(app, host=host, port=port, timeout=timeout, max_connections=max_connections,
                shutdown_timeout=shutdown_timeout, access_log=access_log).run(sockets=[sock])


def _listen(host: str, port: int):
    """A socket bound to ``host:port``, or a OneclassError saying why not (in use, no such
    address); uvicorn's own bind logs and exits with status 3."""
    import socket

    sock = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise OneclassError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


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
