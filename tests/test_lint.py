"""The code passes ``ruff check`` with the project's configuration (pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    try:
        out = subprocess.run([*cmd, "check", "pcgraph", "tests", "benchmarks"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        pytest.skip("ruff is not installed (pip install -e .[test])")
    if "No module named ruff" in out.stderr:
        pytest.skip("ruff is not installed (pip install -e .[test])")
    assert out.returncode == 0, out.stdout + out.stderr
