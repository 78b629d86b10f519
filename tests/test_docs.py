"""The documentation runs: the README's library example executes as written (on a tiny fake
MNIST), and every `oneclass ...` command quoted in the README, the docs and the Makefile
names a real subcommand, real options and (for `bench`) a real suite."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oneclass.bench import SUITES
from oneclass.cli import build_parser, tomllib  # tomli on Python 3.10

from .conftest import write_fake_mnist

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "Makefile"]
# `oneclass bench NAME` also takes these (see cli.cmd_bench)
BENCH_COMMANDS = {"list", "docs", "speed", "speed-anogan", "serve", "soak", "export", "predict",
                  "compare"}


FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block."""
    return FENCE.findall(text)


def commands(text: str, makefile: bool = False) -> list[str]:
    """Every `oneclass SUBCOMMAND ...` command quoted in Markdown (code blocks and spans), or
    in the recipes of a Makefile."""
    pieces = []
    for lang, body in fenced_blocks(text):
        if lang not in ("", "sh", "bash", "console"):
            continue
        lines: list[str] = []
        for line in body.splitlines():
            line = line.split(" #")[0].rstrip()
            if lines and (lines[-1].endswith("\\") or line.lstrip().startswith("[")):
                lines[-1] = lines[-1].rstrip("\\").rstrip() + " " + line.strip()
            else:
                lines.append(line)
        pieces += lines
    rest = FENCE.sub("", text)
    pieces += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", rest)]
    if makefile:
        pieces += [ln.strip() for ln in re.sub(r"\\\n\s*", " ", text).splitlines()]
    # a command starts the piece: oneclass, a path to it, or torchrun ... -m oneclass.cli
    start = r"^(?:\S*/)?(?:oneclass|torchrun .*?-m oneclass\.cli) ([a-z][\w-]*)(.*?)(?=\s[|;&]|$)"
    return [m.group(1) + m.group(2) for piece in pieces if (m := re.match(start, piece.strip()))]


def _options(parser) -> dict[str, set[str]]:
    """Subcommand -> its option strings."""
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: set(sp._option_string_actions) for name, sp in sub.choices.items()}


def test_the_command_scanner_finds_what_it_should():
    md = ("text `oneclass bench fcdd-cifar10 --data-root D --out\n  runs/x` and\n"
          "```\noneclass train --method fcdd \\\n   --epochs 3   # note --not-a-flag\n"
          "oneclass serve RUN [--port 1]\n    [--timeout 3]\n```\n"
          "`pip install 'oneclass[serve]'` `oneclass.create(x)`\n")
    assert commands(md) == ["train --method fcdd --epochs 3",
                            "serve RUN [--port 1] [--timeout 3]",
                            "bench fcdd-cifar10 --data-root D --out runs/x"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_documented_commands_exist(path):
    subs = _options(build_parser())
    cmds = commands(path.read_text(), makefile=path.name == "Makefile")
    assert cmds, f"{path.name}: no commands found"
    bad = []
    for cmd in cmds:
        name, *args = cmd.split()
        if name not in subs:
            bad.append(f"{cmd!r}: no subcommand {name!r}")
            continue
        known = subs[name]
        flags = re.findall(r"(?<![\w-])(--[a-z][\w-]*)", " ".join(args))
        bad += [f"{cmd!r}: {name} has no option {f}" for f in flags if f not in known]
        if name == "bench" and args and not args[0].startswith("-") and not args[0].isupper():
            if args[0] not in SUITES and args[0] not in BENCH_COMMANDS:
                bad.append(f"{cmd!r}: no bench suite {args[0]!r}")
    assert not bad, f"{path.name}:\n" + "\n".join(bad)


def test_readme_library_example_runs(tmp_path):
    """The README's Python example, on a fake MNIST and with fewer epochs, does what its
    comments say."""
    root = tmp_path / "data"
    root.mkdir()
    write_fake_mnist(root, 400, 60, noise=30)
    (code,) = [b for lang, b in fenced_blocks((ROOT / "README.md").read_text())
               if lang == "python"]
    assert 'root="../shared/data"' in code and '"model/"' in code and "epochs=30" in code
    code = (code.replace('root="../shared/data"', f"root={str(root)!r}")
            .replace('"model/"', repr(str(tmp_path / "model")))
            .replace("epochs=30", "epochs=2, pretrain_epochs=1, batch_size=16"))
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    test, scores, maps, labels = ns["test"], ns["scores"], ns["maps"], ns["labels"]
    assert len(test) == 60 and scores.shape == (60,) and np.isfinite(scores).all()
    assert tuple(maps.shape) == (8, 28, 28)
    assert set(np.unique(labels)) <= {0, 1}
    assert np.array_equal(labels, (scores >= ns["det"].threshold_).astype(labels.dtype))
    assert np.array_equal(ns["det2"].score(test), scores)  # "identical scores"
    assert (tmp_path / "model" / "model.json").is_file()


def test_install_hints_use_a_checkout_and_name_real_extras():
    """oneclass is not on a package index: an install hint for an extra, in the docs or in
    an error message, is ``pip install '.[extra]'`` (from a checkout) and names an extra
    pyproject.toml declares; ``'oneclass[extra]'`` would look oneclass up on an index."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["project"]["optional-dependencies"])
    texts = {p: p.read_text() for p in [*DOCS, *sorted((ROOT / "src").rglob("*.py"))]}
    found, bad = 0, []
    for path, text in texts.items():
        text = re.sub(r"\\\n\s*", " ", text)  # line continuations
        # any flags and quoting: -e '.[dev]', $(PIPFLAGS) -U ".[a,b]", .[serve]>=0.1, ...
        for cmd in re.finditer(r"pip3?\s+install\b[^\n`]*", text):
            args = cmd.group(0).split(" #")[0]  # not a shell comment after it
            line = text[:cmd.start()].count("\n") + 1
            where = f"{path.relative_to(ROOT)}:{line}"
            for m in re.finditer(r"(?<![\w.\[])['\"]?([^\s'\"\[=<>(),]*)\[([^\]]*)\]", args):
                found += 1
                if m.group(1) != ".":
                    bad.append(f"{where}: {m.group(0)!r} is not the checkout form '.[...]'")
                bad += [f"{where}: no extra {e!r} in pyproject.toml"
                        for e in m.group(2).split(",") if e.strip() not in extras]
    assert found >= 6  # README: export, serve, both; Makefile: dev; the natural hint ...
    assert not bad, "\n".join(bad)


def test_the_code_runs_on_the_oldest_python_pyproject_declares():
    """``requires-python`` is a promise: no module, in the package, the tests or the
    scripts, uses a feature of a later Python (``tomllib`` is 3.11; 3.10 reads TOML with
    tomli). vermin reads the sources; it runs nothing."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    oldest = re.fullmatch(r">=\s*(3\.\d+)", spec)
    assert oldest, f"requires-python {spec!r}: expected '>=3.N'"
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())",
         "--no-tips", "--violations", "--eval-annotations", f"-t={oldest.group(1)}-",
         "src/oneclass", "tests", "scripts"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "Analyzing" in out.stdout, out.stdout + out.stderr  # it read the files
    assert out.returncode == 0, out.stdout + out.stderr
