"""Shared fixtures. Tests that assert exact values run in float64 through the ``x64`` fixture."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled (restored afterwards)."""
    import jax

    with jax.enable_x64(True):
        yield


@pytest.fixture
def models_dir() -> Path:
    return MODELS
