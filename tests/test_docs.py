"""The documentation quotes the example models as they are: every fenced block that starts with
``# models/NAME.pcg`` must be that file, or a contiguous excerpt of it, without comment lines."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"```[a-z]*\n# (models/[\w]+\.pcg)[^\n]*\n(.*?)```", re.S)


def _strip(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _quotes():
    for doc in DOCS:
        for m in BLOCK.finditer(doc.read_text()):
            yield pytest.param(doc, m.group(1), m.group(2), id=f"{doc.name}:{m.group(1)}")


@pytest.mark.parametrize("doc, path, body", list(_quotes()))
def test_quoted_model_matches_file(doc, path, body):
    quote, text = _strip(body), _strip((ROOT / path).read_text())
    runs = [text[i:i + len(quote)] for i in range(len(text) - len(quote) + 1)]
    assert quote in runs, f"{doc}: the quote of {path} is stale"


def test_some_models_are_quoted():
    assert len(list(_quotes())) >= 6
