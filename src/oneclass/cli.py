"""Command line: each subcommand is a thin call into the library.

``main(argv)`` returns the exit code, so tests run the CLI in-process. User errors
(:class:`OneclassError`) print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from .errors import ConfigError, OneclassError

log = logging.getLogger("oneclass")


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = _value(value)
    return out


def _value(text: str) -> Any:
    """``--set`` values: JSON numbers, booleans, null and lists as such, anything else a string
    (so that ``--set epochs=60`` equals a suite's ``"epochs": 60``)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _read_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (a config is JSON or TOML)") from None
    try:
        cfg = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'} ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p}: config must be a mapping of parameters")
    # a run's own config.json may be given: its record of the run is not configuration
    from .runs import RUN_RECORD

    cfg = {k: v for k, v in cfg.items() if k not in RUN_RECORD}
    for k in _CONFIG_TEXT:
        if cfg.get(k) is not None and not isinstance(cfg[k], str):
            raise ConfigError(f"{p}: {k} must be text, got {cfg[k]!r}")
    limit = cfg.get("anomaly_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{p}: anomaly_limit must be a whole number >= 1, got {limit!r}")
    if "params" in cfg:
        if not isinstance(cfg["params"], dict):
            raise ConfigError(f"{p}: params must be a table of method parameters, got "
                              f"{cfg['params']!r}")
        extra = sorted(set(cfg) - set(_CONFIG_TEXT) - {"params", "anomaly_limit"})
        if extra:  # with a params table, a parameter beside it would be ignored
            raise ConfigError(f"{p}: unknown key(s) {', '.join(extra)}; method parameters go "
                              f"in params, beside it only {', '.join(_CONFIG_TEXT)}, "
                              "anomaly_limit")
    return cfg


#: Config keys that are not method parameters (text values), beside anomaly_limit.
_CONFIG_TEXT = ("method", "data", "data_root", "outliers", "anomalies", "reference",
                "on_bad_image")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _count(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number of at least ``minimum`` (and at most ``maximum``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {minimum} to {maximum}, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value
    return parse


def _progress(args) -> bool | None:
    return False if args.quiet else None


def cmd_methods(args) -> int:
    import sys
    import textwrap

    from .registry import available, get, parameter_notes

    if not args.name:
        for name in available():
            doc = (get(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:<12} {doc.replace(' (see module docstring)', '')}")
        print("\n`oneclass methods NAME` lists a method's parameters (--set KEY=VALUE).")
        return 0
    klass = get(args.name)
    module = sys.modules[klass.__module__].__doc__ or ""
    print(f"{klass.name}: {module.strip().split(chr(10) + chr(10))[0]}" if module.strip()
          else klass.name)
    print("\nparameters (--set KEY=VALUE, values in JSON; or a params table in --config), "
          "with defaults:")
    notes = parameter_notes(klass)
    for key, value in klass.all_defaults().items():
        shown = json.dumps(value)
        print(f"  {key} = {shown}")
        if notes.get(key):
            print(textwrap.fill(notes[key], width=88, initial_indent="      ",
                                subsequent_indent="      "))
    return 0


def cmd_train(args) -> int:
    from .train import init_distributed

    rank, world = init_distributed()  # under torchrun: join the process group
    if rank != 0:  # one log, from rank 0
        log.setLevel(logging.WARNING)
    ok = False
    try:
        code = _train(args, rank, world)
        ok = True
        return code
    finally:
        if world > 1:
            from .train import leave_distributed

            leave_distributed(ok)
            args.exit_now = True  # see train.exit_now


def _train(args, rank: int, world: int) -> int:
    from .runs import train

    cfg = _read_config(args.config)
    method = args.method or cfg.get("method")
    spec = args.data or cfg.get("data")
    if not method:
        raise ConfigError("no method given: use --method NAME (see `oneclass methods`)")
    if not spec:
        raise ConfigError("no data given: use --data SPEC (a folder, mnist:C, elpv, ...)")
    params = dict(cfg.get("params", {k: v for k, v in cfg.items()
                                      if k not in (*_CONFIG_TEXT, "anomaly_limit")}))
    sets = _parse_sets(args.set)
    params.update(sets)
    for key, value in (("epochs", args.epochs), ("seed", args.seed), ("device", args.device)):
        if value is None or value == "":
            continue
        if key in sets and sets[key] != value:  # one of them would be ignored
            raise ConfigError(f"--{key} {value} and --set {key}={sets[key]} disagree: give one")
        params[key] = value
    root = args.data_root or cfg.get("data_root")
    anomalies = args.anomalies or cfg.get("anomalies")
    limit = args.anomaly_limit if args.anomaly_limit is not None else cfg.get("anomaly_limit")
    if limit is not None and not anomalies:
        raise ConfigError("--anomaly-limit is the number of labeled anomalies per defect type "
                          "taken from --anomalies SPEC; give --anomalies too")
    det = train(method, spec, Path(args.out), params, data_root=root, resume=args.resume,
                progress=_progress(args), outliers=args.outliers or cfg.get("outliers"),
                anomalies=anomalies,
                anomaly_limit=5 if limit is None else limit,
                on_bad_image=args.on_bad_image or cfg.get("on_bad_image") or "error",
                reference=args.reference or cfg.get("reference"))
    if rank == 0 and getattr(det, "finished_before_", False):
        print(f"{args.out}: finished with this configuration; nothing to resume (model in "
              f"{args.out}/model)")
    elif rank == 0:
        print(f"trained {det.name} on {spec} in {det.train_seconds_:.1f} s"
              f"{f' on {world} processes' if world > 1 else ''}; threshold "
              f"{det.threshold_:.6g} ({det.threshold_source_}); model in {args.out}/model")
    return 0


def cmd_eval(args) -> int:
    from .runs import evaluate, format_metrics

    m = evaluate(Path(args.run), args.data, args.data_root, args.device or "auto",
                 on_bad_image=args.on_bad_image, progress=_progress(args))
    print(format_metrics(m))
    print(f"metrics written to {Path(args.run) / 'metrics.json'}")
    return 0


def cmd_predict(args) -> int:
    from .runs import predict

    csv_path = Path(args.out) / "predictions.csv"
    try:
        r = predict(Path(args.run), args.inputs, Path(args.out), resume=args.resume,
                    overwrite=args.overwrite, heatmaps=not args.no_heatmaps,
                    device=args.device or "auto", progress=_progress(args),
                    on_bad_image=args.on_bad_image, batch_size=args.batch_size,
                    heatmap_size=args.heatmap_size)
    except (OSError, OneclassError) as exc:  # rows are flushed batch by batch: a rerun continues
        if not _writing(exc):
            raise
        why = (exc.strerror or exc) if isinstance(exc, OSError) else exc
        kept = "the rows already in predictions.csv are kept: " if csv_path.is_file() else ""
        raise OneclassError(f"{args.out}: cannot write predictions ({why}); {kept}rerun with "
                            "--resume") from None
    bad = f", {r['unreadable']} unreadable skipped" if r["unreadable"] else ""
    # resumed: the new rows' count alone read as if the file held no anomalous image
    total = f" ({r['anomalous_total']} in the whole file)" if r["skipped"] else ""
    print(f"scored {r['scored']} images ({r['skipped']} already done{bad}), {r['anomalous']} "
          f"anomalous{total}; results in {r['csv']}")
    return 0


def _writing(exc: Exception) -> bool:
    """Whether ``exc`` is a failure to write (disk full, permissions), not bad input."""
    from .io import WriteError

    return isinstance(exc, (OSError, WriteError))


def cmd_export(args) -> int:
    from .export import export_onnx, loaded_model_id, parity, parity_problems
    from .runs import load_model, model_dir

    if args.format != "onnx":
        raise ConfigError(f"export format {args.format!r} is not supported; use --format onnx")
    run = Path(args.run)
    det = load_model(run, "cpu")
    out = Path(args.out) if args.out else run / "model.onnx"
    export_onnx(det, out, input_dtype=args.input_dtype,
                model_id=loaded_model_id(det, model_dir(run)))
    print(f"exported {det.name} to {out}")
    if args.check:
        import torch

        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (args.check, *det.input_shape_), dtype=torch.uint8, generator=g)
        r = parity(det, out, x)
        print(f"parity on {r['images']} random images: score max abs diff "
              f"{r['score_max_abs_diff']:.3g}, map max abs diff {r['map_max_abs_diff']:.3g}, "
              f"labels agree {r['labels_agree']:.0%}")
        problems = parity_problems(r, map_rel_tol=det.map_parity_tol)
        if problems:
            print(f"oneclass: error: parity check failed: {'; '.join(problems)} (the file is at "
                  f"{out}; do not deploy it)", file=sys.stderr)
            return 1
    return 0


def cmd_serve(args) -> int:
    import os

    from .data.images import check_max_pixels_env, max_pixels_from_env, set_max_pixels
    from .serve import SERVE_MAX_PIXELS, check_api_key, serve

    if args.max_pixels is None:
        if max_pixels_from_env():
            check_max_pixels_env()  # a bad value stops the service now, not every upload
        else:
            set_max_pixels(SERVE_MAX_PIXELS)  # a few MB of upload can hold that many pixels
    # An empty key is an error, not "no key": `--api-key "$KEY"` with KEY unset, or
    # ONECLASS_API_KEY= in a unit file, would otherwise serve the model to anyone.
    if args.api_key is not None:
        key = args.api_key
        check_api_key(key, "--api-key", "leave out --api-key (and ONECLASS_API_KEY)")
    else:
        key = os.environ.get("ONECLASS_API_KEY")
        check_api_key(key, "ONECLASS_API_KEY", "unset it")
    serve(Path(args.run), host=args.host, port=args.port, api_key=key,
          max_upload_mb=args.max_upload_mb, device=args.device or "auto", timeout=args.timeout,
          max_connections=args.max_connections or None, shutdown_timeout=args.shutdown_timeout,
          access_log=not args.no_access_log, allowed_hosts=args.allowed_host)
    return 0


def cmd_report(args) -> int:
    from .runs import report

    path = report(Path(args.run), args.data, args.data_root, top=args.top,
                  device=args.device or "auto", on_bad_image=args.on_bad_image,
                  progress=_progress(args))
    print(f"report written to {path}")
    return 0


def cmd_demo(args) -> int:
    import time

    from .runs import evaluate, format_metrics, report, train
    from .runs.layout import _text

    t0 = time.perf_counter()
    out = Path(args.out)
    params: dict[str, Any] = _parse_sets(args.set)
    params["epochs"] = args.epochs
    what = ("ELPV solar cells (normal cells for training; held-back normal and defective "
            "cells for testing)" if args.data == "elpv" else args.data)
    print(f"oneclass demo: {args.method} on {_text(what)}, {args.epochs} epochs")
    det = train(args.method, args.data, out, params, data_root=args.data_root,
                progress=_progress(args))
    print(f"trained in {det.train_seconds_:.1f} s")
    m = evaluate(out, args.data, args.data_root, progress=_progress(args))
    print(format_metrics(m))
    path = report(out, args.data, args.data_root, progress=_progress(args))
    print(f"report: {path}")
    auc = "n/a" if m["image_auroc"] is None else f"{m['image_auroc']:.4f}"
    print(f"image AUROC: {auc}  (demo finished in {time.perf_counter() - t0:.0f} s)")
    return 0


def _batches(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(b) for b in text.split(","))
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise ConfigError(f"--score-batch wants positive integers separated by commas, got {text!r}")
    return out


def _seeds(text: str) -> tuple[int, ...]:
    """An argparse type: distinct whole numbers >= 0 separated by commas."""
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        out = ()
    if not out or min(out) < 0 or len(set(out)) < len(out):
        raise argparse.ArgumentTypeError(
            f"expected distinct whole numbers >= 0 separated by commas, got {text!r}")
    return out


#: The options of each ``bench`` command besides --out and --data-root (a suite: "<suite>").
_BENCH_OPTIONS = {"<suite>": {"seeds", "only", "set", "data", "methods", "label"},
                  "compare": {"data", "methods"}, "docs": {"results"},
                  "speed": {"score_batch"}, "speed-anogan": set(),
                  **{k: {"set"} for k in ("serve", "export", "predict", "soak")}}


def cmd_bench(args) -> int:
    from .bench import SUITES, run_suite

    taken = _BENCH_OPTIONS.get(args.suite, _BENCH_OPTIONS["<suite>"])
    given = [o for o, v in (("seeds", args.seeds != (0,)), ("only", args.only),
                            ("set", args.set), ("results", args.results), ("data", args.data),
                            ("methods", args.methods), ("label", args.label is not None),
                            ("score_batch", args.score_batch != "64")) if v and o not in taken]
    if given and args.suite != "list":
        raise ConfigError(f"bench {args.suite} does not take "
                          + ", ".join("--" + o.replace("_", "-") for o in given))
    if args.suite == "speed":
        _batches(args.score_batch)  # checked before the runs that come first

    if args.suite == "list":
        for name in sorted(SUITES):
            print(f"{name:18s} {len(SUITES[name])} runs")
        print("speed, speed-anogan, export, serve, predict, compare: throughput and side-by-side commands")
        print("soak: a long mixed load on `oneclass serve` (errors, server memory); "
              "--set requests=N --set clients=C --set every=K")
        return 0
    if args.suite == "docs":
        from .bench import write_docs

        dirs = [Path(d) for d in (args.results or ["runs/bench", "runs/bench-fcdd",
                                                   "runs/bench-speed", "runs/bench-sad"])]
        path = write_docs(dirs, Path(args.out if args.out != "runs/bench" else
                                     "docs/benchmarks.md"), Path("docs/benchmark-notes.md"))
        print(f"written {path}")
        return 0
    if args.suite in ("serve", "export", "predict", "soak"):
        from .deploybench import run

        path = run(args.suite, Path(args.out), **_parse_sets(args.set))
        print(path.read_text())
        print(f"written to {path}")
        return 0
    if args.suite in ("speed", "speed-anogan"):
        from . import speed
        from .bench import machine
        from .io import write_text

        peak = speed.peaks()
        if args.suite == "speed":
            nets = (speed.lenet_rows(peak=peak),
                    speed.fcdd_rows(peak=peak, score_batches=_batches(args.score_batch)),
                    speed.patchcore_rows(peak=peak))
            limits = speed.against_best_peak
        else:
            nets = (speed.anogan_search_rows(flops=True),)
            limits = speed.search_limits
        end = speed.peaks()
        best = limits([r for rows in nets for r in rows], [peak, end])
        tables = (speed.peak_rows(peak) + speed.peak_rows(end, "end of run")
                  + speed.peak_rows(best, "larger of the two: the limit of every % peak"),
                  *nets)
        table = "\n".join(speed.markdown(rows) for rows in tables)
        path = Path(args.out) / f"{args.suite}.md"
        batches = f"; FCDD scoring batch sizes {args.score_batch}" if args.suite == "speed" else ""
        write_text(path, f"Machine: {machine()}{batches}\n\n{table}")
        print(table)
        print(f"written to {path}")
        return 0

    if args.suite == "compare":
        from .compare import run_compare

        md = run_compare(args.data or [], Path(args.out), args.data_root,
                         methods=_method_names(args.methods))
        print(Path(md).read_text())
        print(f"written to {md}")
        return 0
    seeds = list(args.seeds)
    only = args.only.split(",") if args.only else None
    run_suite(args.suite, Path(args.out), args.data_root, seeds=seeds, only=only,
              overrides=_parse_sets(args.set) or None, data=args.data or None,
              methods=_method_names(args.methods), label=args.label)
    print(f"results: {Path(args.out) / 'results.md'}")
    return 0


def _method_names(text: str | None) -> list[str] | None:
    """``--methods a,b``: registered names, spelled as ``--method`` takes them (case, dashes
    and spaces as there; an unknown name is an error with the nearest ones)."""
    from .registry import get

    if not text:
        return None
    return [get(m).name for m in text.split(",") if m.strip()] or None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oneclass", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, with the INFO lines of the libraries used (onnx, ...)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def images(sp, policy: str | None = "error"):  # train: None, so a config file can set it
        sp.add_argument("--on-bad-image", choices=("error", "skip"), default=policy,
                        help="an unreadable image stops the command with its name (error, the "
                        "default) or is left out with a warning and a count (skip)")
        sp.add_argument("--max-pixels", type=_count(1), metavar="N",
                        help="refuse images with more pixels than N (decompression bombs; "
                        "default 178956970 or $ONECLASS_MAX_PIXELS)")

    def common(sp, quiet=True, device=True):
        if quiet:
            sp.add_argument("-q", "--quiet", action="store_true",
                            help="no progress bars or per-epoch log")
        if device:
            sp.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")

    s = sub.add_parser("methods", help="list the registered methods, or one method's parameters")
    s.add_argument("name", nargs="?", help="a method: show its parameters and their defaults")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("train", help="train a method and save the model in a run directory")
    s.add_argument("--method", help="method name (see `oneclass methods`)")
    s.add_argument("--data", help="folder, mnist:C, fashion-mnist:C, cifar10:C, elpv, "
                   "synthetic, natural (see README)")
    s.add_argument("--out", required=True, help="run directory to write")
    s.add_argument("--epochs", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--config", help="JSON or TOML file with method, data and params")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set a method parameter (repeatable)")
    s.add_argument("--data-root", help="folder of the benchmark npz files")
    s.add_argument("--resume", action="store_true", help="continue from the run's checkpoints")
    s.add_argument("--outliers", metavar="SPEC",
                   help="outlier exposure images (another folder or dataset, e.g. cifar10)")
    s.add_argument("--anomalies", metavar="SPEC",
                   help="labeled anomalies: the anomalous test images of an MVTec-layout "
                   "folder or benchmark, or a plain folder of defect images (left out of eval)")
    s.add_argument("--anomaly-limit", type=_count(1), metavar="N",
                   help="labeled anomalies per defect type (default 5)")
    s.add_argument("--reference", metavar="SPEC",
                   help="reference set of other classes (doc): mnist, fashion-mnist:-7, a folder "
                   "of class folders, imagenet:SPEC for unlabeled images")
    common(s)
    images(s, policy=None)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="score the test split; write RUN/metrics.json")
    s.add_argument("run")
    s.add_argument("--data", help="data spec (default: the one the run was trained on)")
    s.add_argument("--data-root")
    common(s)
    images(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("predict", help="score images or folders; write predictions.csv and heatmaps")
    s.add_argument("run")
    s.add_argument("inputs", nargs="+", metavar="INPUT")
    s.add_argument("--out", required=True)
    s.add_argument("--resume", action="store_true", help="skip images already in predictions.csv")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing predictions.csv and its heatmaps when the run "
                   "completes (a run that stops keeps them; without this, or --resume, an "
                   "existing predictions.csv is an error)")
    s.add_argument("--no-heatmaps", action="store_true")
    s.add_argument("--heatmap-size", choices=["image", "model"], default=None,
                   help="image (default): each heatmap over the image as given, at its size "
                   "(longer side at most 1024 px); model: over the image as the model saw it, "
                   "at the model's input size. --resume keeps the size of the earlier rows")
    s.add_argument("--batch-size", type=_count(1), default=32,
                   help="images per batch (memory stays bounded by one batch)")
    common(s)
    images(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export the model (ONNX: raw images in, score and map out)")
    s.add_argument("run")
    s.add_argument("--format", default="onnx", help="onnx (default)")
    s.add_argument("--out", help="file to write (default RUN/model.onnx)")
    s.add_argument("--input-dtype", default="float32", choices=["float32", "uint8"],
                   help="input type of the graph; values are 0..255 either way. float32 "
                   "(default) takes the resized image unrounded and scores as predict does; "
                   "uint8 takes it rounded, which moves scores of resized images by about 1%%")
    s.add_argument("--check", type=_count(0), default=8, metavar="N",
                   help="compare onnxruntime with torch on N random images (0: skip); exit "
                   "status 1 when scores or maps differ by more than 1e-4 of their scale")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("serve", help="HTTP service and web page scoring uploaded images")
    s.add_argument("run")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 127.0.0.1 (the default) is this machine only, "
                   "0.0.0.0 every interface (then set --api-key)")
    s.add_argument("--port", type=_count(0, 65535), default=8000, help="0: any free port")
    s.add_argument("--api-key", help="require this key in the X-API-Key header (all routes but "
                   "/health and the page); default: the ONECLASS_API_KEY environment variable. "
                   "An empty key is an error: leave both out to serve without a key")
    s.add_argument("--max-upload-mb", type=_positive_float, default=20.0,
                   help="larger uploads get 413")
    s.add_argument("--timeout", type=_positive_float, default=30.0, metavar="SECONDS",
                   help="a client must send its request headers, and then its body, each "
                   "within this many seconds; slower clients get 408 and are disconnected")
    s.add_argument("--max-connections", type=_count(0), default=64, metavar="N",
                   help="connections served at once, more get 503 (0: no limit)")
    s.add_argument("--max-pixels", type=_count(1), metavar="N",
                   help="uploads with more pixels than N get 400 (decompression bombs; "
                   "default 40000000 or $ONECLASS_MAX_PIXELS)")
    s.add_argument("--shutdown-timeout", type=_positive_float, default=25.0, metavar="SECONDS",
                   help="on SIGTERM or Ctrl-C, wait this long for the requests in flight, "
                   "then answer the rest 503 (default 25: under the 30 s Kubernetes waits "
                   "before SIGKILL); a second signal stops at once")
    s.add_argument("--no-access-log", action="store_true",
                   help="no log line per request (method, path, status, ms, client)")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="on a loopback --host, also answer requests whose Host header is NAME "
                   "(repeatable; e.g. the name a reverse proxy on this machine forwards). "
                   "Other names get 400, so web pages cannot reach the service by DNS "
                   "rebinding; '*' answers any name")
    common(s, quiet=False)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("report", help="write RUN/report.html")
    s.add_argument("run")
    s.add_argument("--data")
    s.add_argument("--data-root")
    s.add_argument("--top", type=_count(1), default=8, help="examples per gallery")
    common(s)
    images(s)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("bench", help="run a benchmark suite (resumable)")
    s.add_argument("suite", help="suite name (run `oneclass bench list` to see them all), "
                   "speed, speed-anogan, serve, soak, export, predict, compare (beside anomalib, "
                   "see `make compare`), or docs to write docs/benchmarks.md")
    s.add_argument("--out", default="runs/bench")
    s.add_argument("--data-root")
    s.add_argument("--seeds", type=_seeds, default=(0,), help="comma-separated seeds")
    s.add_argument("--only", help="comma-separated data specs to run (e.g. mnist:0,mnist:1)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter of every run")
    s.add_argument("--results", nargs="*", help="with `docs`: result folders to include")
    s.add_argument("--data", action="append", metavar="FOLDER",
                   help="run the suite on this data (e.g. an MVTec-layout folder) instead of its "
                   "own datasets (repeatable); industrial default: DATA_ROOT/kolektorsdd")
    s.add_argument("--methods", help="comma-separated methods to run (default: all of the suite)")
    s.add_argument("--label", help="run only the rows with exactly this label, or if none has "
                   "it, the rows whose label contains this text (e.g. '528x216'); '' selects "
                   "the unlabeled rows")
    s.add_argument("--score-batch", default="64", metavar="B[,B...]",
                   help="with `speed`: scoring batch sizes of the FCDD rows (default 64)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("demo", help="train, evaluate and report on the ELPV solar cells")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--method", default="fcdd")
    s.add_argument("--data", default="elpv")
    s.add_argument("--data-root", help="folder of the benchmark npz files (for --data mnist:C, ...)")
    s.add_argument("--epochs", type=int, default=4,
                   help="training epochs (default 4: the demo runs in minutes on a CPU)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    common(s, device=False)
    s.set_defaults(func=cmd_demo)
    return p


def _version() -> str:
    from . import __version__

    return f"oneclass {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    level = logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO)
    # Our INFO lines, and only warnings from the libraries below us (onnx's optimiser alone
    # logs some thirty INFO lines per export); --verbose shows everything.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s",
                        stream=sys.stderr, force=True)
    log.setLevel(level)
    try:
        code = _run(args)
    finally:
        log.setLevel(logging.NOTSET)
        for h in logging.getLogger().handlers[:]:  # the stream may close after we return
            logging.getLogger().removeHandler(h)
    if getattr(args, "exit_now", False):  # a torchrun process: its work is done and saved
        from .train import exit_now

        exit_now(code)
    return code


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no descriptor (captured), no poll
        return False


def _run(args) -> int:
    try:
        if getattr(args, "max_pixels", None) is not None:
            from .data.images import set_max_pixels

            set_max_pixels(args.max_pixels)
        return int(args.func(args) or 0)
    except OneclassError as exc:
        print(f"oneclass: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError as exc:
        if not _stdout_closed():  # another pipe: an error like any other
            print(f"oneclass: error: {exc.strerror or exc}", file=sys.stderr)
            return 2
        import os  # stdout closed by its reader (`| head`): stop quietly, as cat does

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # 128 + SIGPIPE, what a shell reports for such a command
    except OSError as exc:  # the environment (full disk, permissions), not a bug: one line
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            print(f"oneclass: error: {where}no space left on device; files written atomically "
                  "(models, reports, metrics) keep their previous version", file=sys.stderr)
        else:
            print(f"oneclass: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        ckpt = Path(str(getattr(args, "out", "") or ".")) / "checkpoints"
        saved = getattr(args, "command", "") == "train" and any(ckpt.glob("*.pt"))
        hint = {"train": "; the same command with --resume continues from the last epoch "
                         "checkpoint" if saved else "; no epoch checkpoint was written: run the "
                         "same command again (without --resume) to train from the start",
                "predict": "; the same command with --resume scores the images not yet "
                           "in predictions.csv",
                "bench": "; the same command continues with the runs not yet recorded"}
        print(f"oneclass: interrupted{hint.get(getattr(args, 'command', ''), '')}",
              file=sys.stderr)
        return 130
    except MemoryError:
        print("oneclass: error: out of memory; use a smaller size or batch size", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
