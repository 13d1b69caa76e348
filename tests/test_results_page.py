"""docs/results.md is what ``benchmarks/report.py`` generates from benchmarks/results/*.jsonl."""

from __future__ import annotations

import importlib
import re
import sys

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def report():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("report")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_results_page_matches_its_records(report):
    page = (ROOT / "docs" / "results.md").read_text()
    assert report.render(page) == page, (
        "docs/results.md differs from its records: run `python benchmarks/report.py` "
        "(`--check` shows the difference)")


def test_every_table_of_the_page_is_generated(report):
    """Markdown tables appear only between table markers (no hand-typed figures)."""
    page = (ROOT / "docs" / "results.md").read_text()
    outside = report.BLOCK.sub("", page)
    outside = re.sub(r"```.*?```", "", outside, flags=re.S)
    rows = [line for line in outside.splitlines() if line.startswith("|")]
    assert not rows, f"hand-typed table rows in docs/results.md: {rows[:3]}"


def test_a_changed_record_changes_the_page(report, tmp_path, monkeypatch):
    """The check can fail: a page whose generated block was edited by hand is stale."""
    page = (ROOT / "docs" / "results.md").read_text()
    m = report.BLOCK.search(page)
    assert m is not None
    edited = page[:m.start("body")] + "| 99.99 |\n" + page[m.end("body"):]
    assert report.render(edited) == page
    assert report.main(["--check", "--page", str(_write(tmp_path, edited))]) == 1
    assert report.main(["--check", "--page", str(_write(tmp_path, page))]) == 0


def test_phrase_is_gone():
    """Nothing reports the best accuracy over epochs on test (choices are made on validation)."""
    phrase = " ".join(("best", "test", "accuracy"))  # not spelled out, so this file passes a grep
    hits = [p for p in [*ROOT.glob("docs/**/*.md"), *ROOT.glob("benchmarks/*.py"),
                        *ROOT.glob("pcgraph/*.py"), ROOT / "README.md"]
            if phrase in p.read_text().lower()]
    assert not hits, hits


def _write(tmp_path, text):
    p = tmp_path / "results.md"
    p.write_text(text)
    return p


def test_selection_and_paired_statistics(report):
    """``_evidence``: the epoch is chosen on validation (never test), the paired CI is Student's
    t (checked by hand: t(0.975, 2) = 4.303), and an interval holding 0 says so."""
    ev = importlib.import_module("_evidence")
    run = {"setting": {"lr": 1}, "seed": 0,
           "epochs": [{"epoch": 1, "val": 80.0, "test": 90.0}, {"epoch": 2, "val": 85.0, "test": 70.0},
                      {"epoch": 3, "val": float("nan"), "test": 99.0}]}
    c = ev.chosen(run)
    assert (c["epoch"], c["test"], c["last"]["test"]) == (2, 70.0, 99.0)
    other = {**run, "setting": {"lr": 2}, "epochs": [{"epoch": 1, "val": 84.0, "test": 95.0}]}
    assert ev.select([run, other])[0] == {"lr": 1}
    d, half, n = ev.paired({0: 3.0, 1: 4.0, 2: 5.0}, {0: 2.0, 1: 2.0, 2: 2.0})
    assert (d, n) == (2.0, 3) and half == pytest.approx(4.3027 / 3 ** 0.5, rel=1e-4)
    assert "no difference measured" in ev.verdict("A", "B", d, half, n)
    assert "A ahead" in ev.verdict("A", "B", 2.0, 1.0, 3)
