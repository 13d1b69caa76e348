"""``ModelIR`` → canonical ``.pcg`` text.

The text is the *expanded* model: loops, blocks and includes have already been resolved, so it
lists every node, edge and query, one a line. Parsing it back gives the same IR (spans aside) and
so the same graph. Parameters are written too (their values are already substituted everywhere;
they stay as a record of what the model was built with).
"""

from __future__ import annotations

import math
import re

from ._ir import EdgeIR, ModelIR, NodeIR, QueryIR, Scalar, TermIR, TransformIR
from ._shapes import PARAMETRIC

__all__ = ["format_model", "format_value"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
INDENT = "  "


def format_model(model: ModelIR) -> str:
    lines = [f"model {_ident(model.name)} {{"]
    if model.params:
        lines.append(INDENT + "param " + ", ".join(
            f"{_ident(p.name)} = {format_value(p.value)}" for p in model.params))
    if model.settings.values:
        body = "; ".join(f"{_ident(k)} = {format_value(v)}" for k, v in model.settings.values)
        lines.append(f"{INDENT}settings {{ {body} }}")
    lines += [INDENT + _node(n) for n in model.nodes]
    lines += [INDENT + _edge(e) for e in model.edges]
    lines += [INDENT + _edge(e) for e in model.amortised]
    lines += [INDENT + _query(q) for q in model.queries]
    lines.append("}")
    return "\n".join(lines) + "\n"


def format_value(v: Scalar) -> str:
    """A number, ``true``/``false``, an identifier, or a quoted string."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write the non-finite number {v!r} in a .pcg file")
        return repr(v)
    s = str(v)
    if _IDENT.match(s) and s not in ("true", "false"):
        return s
    if '"' in s or "\n" in s:
        raise ValueError(f"cannot write the string {s!r} in a .pcg file")
    return f'"{s}"'


def _ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"{name!r} is not a valid .pcg name")
    return name


def _node(n: NodeIR) -> str:
    out = f"node {_ident(n.name)}: [{', '.join(str(d) for d in n.shape)}]"
    if n.act != "identity":
        out += f" act = {format_value(n.act)}"
    e = n.energy
    if e.kind != "gaussian" or e.precision != 1.0:
        out += f" energy = {format_value(e.kind)}"
        if e.learned:
            out += f"(precision = {_ident(e.precision)})"
        elif e.precision != 1.0:
            out += f"(precision = {format_value(float(e.precision))})"
        elif e.kind == "laplace" and e.scale != 1.0:
            out += f"(scale = {format_value(float(e.scale))})"
    if n.prior is not None:
        p = n.prior
        out += (f" prior = {format_value(p.kind)}({format_value(float(p.mean))}, "
                f"{format_value(float(p.std))})")
    if n.init is not None:
        out += f" init = {format_value(n.init)}"
    return out


def _edge(e: EdgeIR) -> str:
    arrow = "~>" if e.amortised else "->"
    terms = " + ".join(_term(t) for t in e.terms)
    return f"{_ident(e.src)} {arrow} {_ident(e.dst)} : {terms}"


def _term(t: TermIR) -> str:
    options = []
    if t.pre != "identity":
        options.append(("pre", t.pre))
    if t.bias is not True:
        options.append(("bias", t.bias))
    if t.weight_init != "default":
        options.append(("init", t.weight_init))
    # term options go with the first parametric transform (else the first transform)
    host = next((i for i, tr in enumerate(t.chain) if tr.kind in PARAMETRIC), 0)
    return " |> ".join(
        _transform(tr, options if i == host else []) for i, tr in enumerate(t.chain)
    )


def _transform(t: TransformIR, options: list) -> str:
    args = [format_value(v) for v in t.posargs]
    args += [f"{k} = {format_value(v)}" for k, v in list(t.args) + options]
    return _ident(t.kind) + (f"({', '.join(args)})" if args else "")


def _query(q: QueryIR) -> str:
    parts = []
    if q.clamp:
        parts.append("clamp " + ", ".join(map(_ident, q.clamp)))
    parts += [f"clamp {_ident(n)} where {_ident(m)}" for n, m in q.partial]
    if q.read:
        parts.append("read " + ", ".join(map(_ident, q.read)))
    parts += [f"init {_ident(n)} = {_ident(m)}" for n, m in q.init]
    return f"query {_ident(q.name)} {{ {'; '.join(parts)} }}" if parts else f"query {q.name} {{ }}"
