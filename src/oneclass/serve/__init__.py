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

The package: `app` (the routes and the model), `guards` (the middleware every request passes)
and `server` (uvicorn, limits and shutdown).
"""

from .app import SERVE_MAX_PIXELS, Scorer, check_api_key, create_app
from .guards import API_KEY_HEADER, HostGuard, serve_hosts
from .server import make_server, serve

__all__ = ["API_KEY_HEADER", "HostGuard", "SERVE_MAX_PIXELS", "Scorer", "check_api_key",
           "create_app", "make_server", "serve", "serve_hosts"]
