"""The root of every exception pcgraph raises on purpose (no JAX).

``pcgraph.Error`` is the one class to catch. Its subclasses also derive from the built-in class
that describes them (``ValueError``, ``RuntimeError``, ``FileNotFoundError``), so code written
against those keeps working. The hierarchy is listed in ``docs/api.md`` ("Errors").
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every error pcgraph raises: model, data, shape, initialisation, checkpoint,
    training and command-line errors."""
