"""Every command and snippet in README.md and docs/ runs, and prints the figures the text shows.

The machinery is ``tests/_docrun.py`` (tolerances: accuracies within 0.5 points, other figures
within 2 % relative, integers exactly, timings not compared). The default run executes the quick
items (the embedded digits data, ``check``, ``draw``, ``plot``); ``-m slow`` runs every item,
Fashion-MNIST included, but the few marked ``<!-- long -->`` (reference runs of 10 minutes or more
on a 2-core CPU: the 16-epoch Table-1 training, the depth-128 Hessian), which run only with
``PCGRAPH_DOCRUN_LONG=1``; beside each the doc states a shorter command that ``-m slow`` runs
(its first epoch, a smaller network). ``python tests/_docrun.py DOC --slow [--long]`` rewrites a
doc's shown output from the runs, so its figures are generated, not typed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _docrun

DOCS = [p for p in _docrun.docs() if p.name != "results.md"]  # results.md: benchmarks' tables


def _ids(paths):
    return [str(p.relative_to(_docrun.ROOT)) for p in paths]


@pytest.mark.parametrize("doc", [p for p in DOCS if any(not i.slow and not i.skip
                                                        for i in _docrun.parse(p).items)],
                         ids=lambda p: str(p.relative_to(_docrun.ROOT)))
def test_quick_items_reproduce(doc, tmp_path):
    problems = _docrun.execute(_docrun.parse(doc), tmp_path, slow=False)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("doc", [p for p in DOCS if any(i.slow for i in _docrun.parse(p).items)],
                         ids=lambda p: str(p.relative_to(_docrun.ROOT)))
def test_every_item_reproduces(doc, tmp_path):
    problems = _docrun.execute(_docrun.parse(doc), tmp_path, slow=True,
                              long=os.environ.get("PCGRAPH_DOCRUN_LONG") == "1")
    assert not problems, "\n".join(problems)


def test_commands_are_in_runnable_blocks():
    """A command quoted outside a ``$`` block or a table (indented, or inline with a figure) would
    escape the tests: there are none."""
    for p in DOCS:
        for n, line in enumerate(p.read_text().splitlines(), 1):
            assert not re.match(r"^ {4}pcgraph ", line), f"{p.name}:{n}: put it in a $ block"


def test_the_runner_notices_a_wrong_figure():
    shown = ("m on digits: test accuracy 95.83% after 10 epoch(s) (1.8 s training, 23 SMM); "
             "run in r")
    item = _docrun.Item("cmd", "pcgraph train x", [shown], (0, 0))
    out = ["m on digits: test accuracy 95.50% after 10 epoch(s) (9.1 s training, 23 SMM); run in r"]
    assert _docrun.compare(item, out) == []  # within 0.5 points; the time is not compared
    out[0] = out[0].replace("95.50", "94.90")
    assert "beyond the tolerance" in _docrun.compare(item, out)[0]
    out[0] = out[0].replace("23 SMM", "25 SMM").replace("94.90", "95.83")
    assert _docrun.compare(item, out)  # integers exactly
    assert "no line like it" in _docrun.compare(item, ["something else"])[0]
    unmeasured = _docrun.Item("cmd", "pcgraph train x", [shown.replace("1.8 s", "? s")], (0, 0))
    assert _docrun.compare(unmeasured, [shown.replace("1.8", "7.5")]) == []
    assert _docrun.compare(unmeasured, [shown.replace("1.8 s ", "")])  # a timing is still there


def test_every_doc_with_commands_is_covered():
    items = [i for p in DOCS for i in _docrun.parse(p).items]
    assert sum(i.kind == "cmd" for i in items) >= 25 and sum(i.kind == "python" for i in items) >= 8


def test_markers(tmp_path):
    """``long`` items (and those on their run directory) are slow and long; ``devices N`` skips
    where fewer devices exist; a run directory that merely starts like a long one is not long."""
    doc = tmp_path / "d.md"
    doc.write_text("<!-- long -->\n```\n$ pcgraph train models/m.pcg --data digits --out runs/a\n```\n"
                   "```\n$ pcgraph eval models/m.pcg --checkpoint runs/a\n"
                   "$ pcgraph train models/m.pcg --data digits --out runs/a-epoch1\n```\n"
                   "<!-- devices 4096 -->\n```python\nprint(1)\n```\n")
    a, b, c, d = _docrun.parse(doc).items
    assert a.long and a.slow and b.long and not c.long and not c.slow
    assert d.skip and "4096 devices" in d.skip
