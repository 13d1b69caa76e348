"""Run the commands and snippets of the documentation and compare their figures with the text.

A doc is read as a list of *items*, in order:

- a fenced block whose lines start with ``$ `` holds shell commands (``pcgraph ...``); the lines
  after a command, up to the next one, are the output the doc shows (``...`` elides lines);
- a ```` ```python ```` block is a snippet; a fenced ```` ```output ```` block right after it is
  what the snippet prints. Snippets using Fashion-MNIST, those after them in the doc, commands on
  a data set other than ``digits``, commands on the run directory of a long command, and any
  block preceded by ``<!-- slow -->`` are slow (run with ``--slow`` / ``-m slow``); the rest is
  the quick subset of the default test run.

Two more markers stand before a block:

- ``<!-- long -->``: a reference run too long even for the slow tests (a 16-epoch Fashion-MNIST
  training, a 10-minute Hessian at depth 128). It runs only with ``--long`` (script) or
  ``PCGRAPH_DOCRUN_LONG=1`` (tests); the doc's shown figure comes from such a run, and the doc
  states beside it a shorter command (its first epoch, a smaller network) that the slow test runs.
  Commands on a long command's run directory are long too.
- ``<!-- devices N -->``: the item needs N JAX devices and is skipped where there are fewer.

Each doc runs in a scratch directory holding a link to ``models/``, so ``runs/...`` and pictures
land there; the items of one doc share that directory and one Python namespace, in order.

Comparison (:func:`compare`): every shown line must appear in the real output with the same text
around its numbers; the numbers must agree within the tolerance — accuracies (``NN.NN%``) within
``ACC_POINTS`` points, other non-integers within ``REL`` relative, integers exactly; timings
(``s``, ``ms/step``) are not compared, and a doc shows one it did not measure as ``? s``. A
``--json`` command's shown ``"key": value`` pairs must be found in the printed JSON.

``PCGRAPH_DOCRUN_LOG=FILE`` appends every item's label and full output to FILE.

Regenerating the figures (the docs' numbers come from these runs)::

    python tests/_docrun.py docs/tutorials/feedforward.md [--slow] [--long]   # rewrite the shown output
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACC_POINTS = 0.5  # accuracy figures: within half a point
REL = 0.02  # other figures: within 2 % relative

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
NUM = re.compile(r"(?<![\w/.\[-])(-?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?)(\s*%|\s*ms/step|\s*s\b)?")
UNMEASURED = re.compile(r"(?<![\w.])\?(\s*ms/step|\s*s\b)")
FAST_DATA = {"digits"}
KNOWN_DATA = {"digits", "fashion-mnist"}


@dataclass
class Item:
    kind: str  # "cmd" | "python"
    text: str  # the command line or the snippet
    shown: list[str]  # the output lines the doc shows (without "..." lines)
    span: tuple[int, int]  # character range of the shown output in the doc (for --update)
    slow: bool = False
    long: bool = False  # only with --long / PCGRAPH_DOCRUN_LONG=1 (implies slow)
    skip: str | None = None  # why it cannot run here (data not installed)
    label: str = ""


@dataclass
class Doc:
    path: Path
    text: str
    items: list[Item] = field(default_factory=list)


def _cmd_data(argv: list[str]) -> str | None:
    if "--data" in argv:
        i = argv.index("--data")
        return argv[i + 1] if i + 1 < len(argv) else None
    return None


def _run_dir(argv: list[str]) -> str | None:
    if len(argv) < 3 or argv[1] != "train":
        return None
    if "--out" in argv:
        return argv[argv.index("--out") + 1]
    algo = argv[argv.index("--algorithm") + 1] if "--algorithm" in argv else "pc"
    stem = Path(argv[2]).stem
    return f"runs/{stem}" if algo == "pc" else f"runs/{stem}-{algo}"


def _uses(argv: list[str], dirs: set[str]) -> bool:
    """Whether a command reads or writes one of the run directories ``dirs`` (or a file in one)."""
    return any(a.rstrip("/") == d or a.startswith(d + "/") for a in argv for d in dirs)


MARKER = re.compile(r"<!-- (slow|long|devices (\d+)) -->\s*$")


def _marker(text: str, fence_start: int) -> tuple[str | None, int]:
    """The marker (``slow``, ``long``, ``devices``) standing just before the fenced block that
    starts at ``fence_start``, and the device count of ``devices N`` (else 0)."""
    m = MARKER.search(text[max(0, fence_start - 30):fence_start])
    if m is None:
        return None, 0
    return m.group(1).split()[0], int(m.group(2) or 0)


def _device_skip(needed: int) -> str | None:
    if not needed:
        return None
    import jax
    have = jax.device_count()
    return None if have >= needed else f"needs {needed} devices, {have} here"


def parse(path: Path) -> Doc:
    text = path.read_text()
    doc = Doc(path, text)
    slow_dirs: set[str] = set()
    long_dirs: set[str] = set()
    py_slow = False
    blocks = list(FENCE.finditer(text))
    for bi, m in enumerate(blocks):
        lang, body = m.group(1), m.group(2)
        start = m.start(2)
        if lang == "python":
            nxt = blocks[bi + 1] if bi + 1 < len(blocks) else None
            shown, span = [], (m.end(), m.end())
            if nxt is not None and nxt.group(1) == "output" and not text[m.end():nxt.start()].strip():
                shown = [s for s in nxt.group(2).splitlines() if s.strip()]
                span = (nxt.start(2), nxt.end(2))
            mark, devices = _marker(text, m.start())
            py_slow = py_slow or "fashion-mnist" in body or mark in ("slow", "long")
            line = text.count("\n", 0, m.start()) + 1
            doc.items.append(Item("python", body, shown, span, slow=py_slow, long=mark == "long",
                                  skip=_device_skip(devices), label=f"{path.name}:{line}:python"))
            continue
        if lang not in ("", "console", "sh", "shell") or not body.lstrip().startswith("$ "):
            continue
        lines = body.splitlines(keepends=True)
        offs = [start]
        for s in lines:
            offs.append(offs[-1] + len(s))
        cmds = [i for i, s in enumerate(lines) if s.startswith("$ ")]
        mark, devices = _marker(text, m.start())
        for k, i in enumerate(cmds):
            j = cmds[k + 1] if k + 1 < len(cmds) else len(lines)
            cmd = lines[i][2:].strip()
            argv = shlex.split(cmd, comments=True)
            shown = [s.rstrip("\n") for s in lines[i + 1:j] if s.strip() and s.strip() != "..."]
            data = _cmd_data(argv)
            long = mark == "long" or _uses(argv, long_dirs)
            slow = (long or (data is not None and data not in FAST_DATA) or mark == "slow"
                    or _uses(argv, slow_dirs))
            skip = _device_skip(devices)
            if data is not None and data not in KNOWN_DATA:
                skip = f"{data} is not installed here"
            rd = _run_dir(argv)
            if rd and slow:
                slow_dirs.add(rd)
            if rd and long:
                long_dirs.add(rd)
            line = text.count("\n", 0, offs[i]) + 1
            doc.items.append(Item("cmd", cmd, shown, (offs[i + 1], offs[j]), slow=slow, long=long,
                                  skip=skip, label=f"{path.name}:{line}: {cmd}"))
    return doc


# ------------------------------------------------------------------------------ running
def scratch(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    link = tmp / "models"
    if not link.exists():
        link.symlink_to(ROOT / "models")
    return tmp


def run_cmd(cmd: str, cwd: Path, timeout: float = 3600) -> tuple[int, list[str]]:
    argv = shlex.split(cmd, comments=True)
    if argv[0] != "pcgraph":
        raise ValueError(f"only pcgraph commands run here: {cmd}")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-m", "pcgraph", *argv[1:]], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout, check=False)
    return p.returncode, (p.stdout + p.stderr).replace("\r", "\n").splitlines()


def run_python(code: str, cwd: Path, ns: dict) -> list[str]:
    buf = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(code, "<doc snippet>", "exec"), ns)  # noqa: S102 - the docs' own snippets
    finally:
        os.chdir(old)
    return buf.getvalue().splitlines()


# ------------------------------------------------------------------------------ comparing
def _figures(line: str) -> tuple[str, list[tuple[float, str, bool]]]:
    """The line's shape (numbers replaced by #) and its compared numbers (value, unit, is_int)."""
    nums = []

    def sub(m):
        raw, unit = m.group(1), (m.group(2) or "").strip()
        if unit in ("s", "ms/step"):
            return "~"
        nums.append((float(raw.replace(",", "")), unit,
                     re.fullmatch(r"-?\d+(?:,\d{3})*", raw) is not None))
        return "#"

    line = UNMEASURED.sub("~", line)  # a timing the doc does not claim: "(? s training"
    shape = NUM.sub(sub, line.strip())
    return re.sub(r"\s+", " ", shape), nums


def _agree(a, b) -> bool:
    (va, ua, ia), (vb, ub, ib) = a, b
    if ua != ub:
        return False
    if ua == "%":
        return abs(va - vb) <= ACC_POINTS
    if ia and ib:
        return va == vb
    return math.isclose(va, vb, rel_tol=REL, abs_tol=1e-12)


def _match(shown: str, actual: list[str]) -> tuple[str | None, str]:
    """The actual line that ``shown`` stands for (None if none), and why it differs if it does."""
    shape, nums = _figures(shown)
    cands = [a for a in actual if _figures(a)[0] == shape]
    if not cands:
        return None, "no line like it in the output"
    for a in cands:
        if all(_agree(x, y) for x, y in zip(nums, _figures(a)[1])):
            return a, ""
    best = min(cands, key=lambda a: sum(not _agree(x, y) for x, y in zip(nums, _figures(a)[1])))
    return best, f"figures differ beyond the tolerance: the output says {best.strip()!r}"


_PAIR = re.compile(r'"(\w+)": (\[[^\[\]]*\]|\{[^{}]*\}|"[^"]*"|true|false|null|-?\d[\d.e+-]*)')


def _found(tree, key, value) -> bool:
    if isinstance(tree, dict):
        if key in tree and tree[key] == value:
            return True
        return any(_found(v, key, value) for v in tree.values())
    if isinstance(tree, list):
        return any(_found(v, key, value) for v in tree)
    return False


def compare(item: Item, actual: list[str]) -> list[str]:
    """Problems with ``item``'s shown output against ``actual`` (empty: it reproduces)."""
    problems = []
    if "--json" in item.text.split() and item.shown and item.shown[0].lstrip().startswith("{"):
        doc = json.loads("\n".join(actual[actual.index(next(a for a in actual if a.startswith(("{", "[")))):]))
        for m in _PAIR.finditer("\n".join(item.shown)):
            try:
                value = json.loads(m.group(2))
            except json.JSONDecodeError:
                continue  # an elided value ("...")
            if not _found(doc, m.group(1), value):
                problems.append(f'"{m.group(1)}": {m.group(2)} is not in the printed JSON')
        return problems
    for s in item.shown:
        _, why = _match(s, actual)
        if why:
            problems.append(f"shown: {s.strip()!r}: {why}")
    return problems


def regenerate(item: Item, actual: list[str]) -> str | None:
    """The shown output rewritten from ``actual`` (None: leave it)."""
    if item.kind == "python":
        return "\n".join(actual) + "\n" if item.shown else None
    if "--json" in item.text.split():
        return None
    return "\n".join(s if s.strip() == "..." or not s.strip() else (_match(s, actual)[0] or s)
                     for s in _shown_with_elisions(item)) + "\n"


def _shown_with_elisions(item: Item) -> list[str]:
    return item._raw if hasattr(item, "_raw") else item.shown


def execute(doc: Doc, workdir: Path, *, slow: bool, long: bool = False,
            update: bool = False) -> list[str]:
    """Run the doc's items (the slow ones only with ``slow``, the long ones only with ``long``) in
    order; the problems found. With ``update`` the doc's shown output is rewritten from the runs."""
    cwd = scratch(workdir)
    ns: dict = {"__name__": "__doc__"}
    problems = []
    edits = []
    for item in doc.items:
        if item.skip or (item.slow and not slow) or (item.long and not long):
            continue
        if item.kind == "cmd":
            code, actual = run_cmd(item.text, cwd)
            if not item.shown and code != 0:
                problems.append(f"{item.label}: exit {code}: " + " | ".join(actual[-5:]))
                continue
        else:
            try:
                actual = run_python(item.text, cwd, ns)
            except Exception as e:  # noqa: BLE001 - reported as the doc's problem
                problems.append(f"{item.label}: {type(e).__name__}: {e}")
                continue
        if os.environ.get("PCGRAPH_DOCRUN_LOG"):  # every item's output, for reading the figures
            with open(os.environ["PCGRAPH_DOCRUN_LOG"], "a") as log:
                log.write(f"### {item.label}\n" + "\n".join(actual) + "\n")
        if update:
            raw = doc.text[item.span[0]:item.span[1]].splitlines()
            item._raw = raw  # type: ignore[attr-defined]
            new = regenerate(item, actual)
            if new is not None:
                edits.append((item.span, new))
        else:
            problems += [f"{item.label}: {p}" for p in compare(item, actual)]
    if update and edits:
        text = doc.text
        for (a, b), new in sorted(edits, reverse=True):
            text = text[:a] + new + text[b:]
        doc.path.write_text(text)
    return problems


def docs() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("docs", nargs="*", help="docs to run (default: all)")
    ap.add_argument("--slow", action="store_true", help="also the long items")
    ap.add_argument("--long", action="store_true", help="also the long reference runs")
    ap.add_argument("--check", action="store_true", help="compare only, do not rewrite")
    a = ap.parse_args()
    for p in [Path(x).resolve() for x in a.docs] or docs():
        with tempfile.TemporaryDirectory() as tmp:
            found = execute(parse(p), Path(tmp), slow=a.slow or a.long, long=a.long,
                            update=not a.check)
        print(f"{p.relative_to(ROOT)}: " + ("ok" if not found else "\n  " + "\n  ".join(found)))
