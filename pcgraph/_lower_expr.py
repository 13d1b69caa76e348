"""Names and expressions of lowering (part of ``_lower._Lowering``): node names (plain, block
arguments, interpolated ``h{i-1}``) and a small arithmetic interpreter (no ``eval``): iterative,
depth-limited, numbers read safely (bounded, finite, integers within ``max_integer``)."""

from __future__ import annotations

import math
import re

from lark import Token

from ._diagnostics import did_you_mean
from ._ir import Span
from ._lower_scope import Number, Value, Ctx
from ._syntax import Node

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Expressions:
    """Name and expression methods of ``_lower._Lowering`` (a mixin: ``self.error``,
    ``self.limit``, ``self.span`` and ``self.limits`` are its)."""

    # ---- names ---------------------------------------------------------------------------------
    def names(self, name_list: Node, ctx: Ctx) -> list[tuple[str, Span]]:
        return [self.name(n, ctx) for n in name_list.children]

    def name(self, t, ctx: Ctx) -> tuple[str, Span]:
        """A node name: plain, a block's name argument, or interpolated (``h{i-1}``)."""
        if isinstance(t, Node) and t.data == "name":
            t = t.children[0]
        span = self.span(ctx.file, t)
        if isinstance(t, Token):
            name = str(t)
            var = ctx.scope.var(name)
            if var is not None and var.kind == "arg":
                if not isinstance(var.value, str):
                    raise self.error(
                        f"block parameter {name!r} is {var.value!r} here, but a node name is "
                        "needed", span, hint="pass a name, e.g. h1", code="bad-name", ctx=ctx)
                return var.value, span
            return name, span
        parts = []
        for p in t.children:  # Node('iname'): TEXT tokens and expression trees
            if isinstance(p, Token):
                parts.append(str(p))
                continue
            v = self.eval(p, ctx, names=True)
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise self.error(f"{{...}} in a name must give an integer or a name, not {v!r}",
                                 self.span(ctx.file, p), code="bad-name", ctx=ctx)
            parts.append(str(v))
        name = "".join(parts)
        if not _NAME_RE.match(name):
            raise self.error(f"{name!r} is not a valid name", span,
                             hint="names are letters, digits and _ (check for negative indices)",
                             code="bad-name", ctx=ctx)
        return name, span

    # ---- expressions ---------------------------------------------------------------------------
    def number(self, t, ctx: Ctx) -> Number:
        v = self.eval(t, ctx)
        assert isinstance(v, (int, float))
        return v

    def value(self, t, ctx: Ctx) -> Value:
        """An option value: a number, a parameter's value, ``true``/``false``, a string, or else
        the identifier itself (``relu``, ``mupc``, ``same``)."""
        if isinstance(t, Node) and t.data == "var":
            name = str(t.children[0])
            var = ctx.scope.var(name)
            if var is None:
                return {"true": True, "false": False}.get(name, name)
        if isinstance(t, Node) and t.data == "string":
            return str(t.children[0])[1:-1]
        if isinstance(t, Node) and t.data == "call":
            raise self.error("a call is not allowed here; give a number or a name",
                             self.span(ctx.file, t), code="bad-value", ctx=ctx)
        return self.eval(t, ctx, names=True)

    _OPS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%"}

    def eval(self, t, ctx: Ctx, names: bool = False) -> Value:
        """Evaluate an expression tree to a number (or, with ``names``, a block's name argument
        when the expression is just that argument). Iterative, so that no expression can exhaust
        the Python stack; nesting deeper than ``max_expr_depth`` is refused."""
        if t.data in ("number", "var", "string"):
            return self.leaf(t, ctx, names)
        limit = self.limits.max_expr_depth
        todo: list[tuple[Node, int, bool]] = [(t, 1, False)]
        values: list[Value] = []
        while todo:
            node, depth, ready = todo.pop()
            kind = node.data
            if ready:
                if kind in ("neg", "pos"):
                    values.append(self.unary(kind, values.pop(), node, ctx))
                else:
                    b = values.pop()
                    values.append(self.binary(kind, values.pop(), b, node, ctx))
            elif kind in ("number", "var", "string"):
                values.append(self.leaf(node, ctx, False))
            else:
                if depth > limit:
                    raise self.limit("max_expr_depth", f"this expression is nested over {limit} "
                                     "deep", self.span(ctx.file, t), ctx=ctx)
                todo.append((node, depth, True))
                todo.extend((c, depth + 1, False) for c in reversed(node.children))
        return values[0]

    def leaf(self, t: Node, ctx: Ctx, names: bool) -> Value:
        kind = t.data
        if kind == "number":
            return self.literal(t.children[0], ctx)
        if kind == "var":
            tok = t.children[0]
            name = str(tok)
            var = ctx.scope.var(name)
            if var is None:
                known = [n for n in ctx.scope.visible("vars")]
                hint = did_you_mean(name, known) or (
                    "define it with `param " + name + " = ...`")
                raise self.error(f"unknown parameter {name!r}", self.span(ctx.file, tok),
                                 hint=hint, code="unknown-parameter", ctx=ctx)
            var.used = True
            if isinstance(var.value, str) and not names:
                raise self.error(f"{name!r} is the name {var.value!r} here, not a number",
                                 self.span(ctx.file, tok), hint=var.note, code="bad-value",
                                 ctx=ctx)
            return var.value
        raise self.error("a string is not a number", self.span(ctx.file, t), code="bad-value",
                         ctx=ctx)

    def literal(self, tok: Token, ctx: Ctx) -> Number:
        """A number token, read safely: bounded length, finite, integers within ``max_integer``."""
        s = str(tok)
        lim = self.limits
        if len(s) > lim.max_number_chars:
            raise self.limit("max_number_chars", f"this number has {len(s):,} characters",
                             self.span(ctx.file, tok), ctx=ctx)
        if "." in s or "e" in s or "E" in s:
            v = float(s)
            return v if math.isfinite(v) else self.checked(v, self.span(ctx.file, tok), ctx)
        if len(s) <= 18:  # below 10**18: within any max_integer worth having, checked cheaply
            v = int(s)
            return v if v <= lim.max_integer else self.checked(v, self.span(ctx.file, tok), ctx)
        digits = len(s.lstrip("0"))
        if digits > lim.max_integer.bit_length() * 0.302 + 2:  # too large to convert
            raise self.limit("max_integer", f"the integer literal has {digits:,} digits",
                             self.span(ctx.file, tok), ctx=ctx)
        return self.checked(int(s), self.span(ctx.file, tok), ctx)

    def checked(self, v: Number, span: Span, ctx: Ctx) -> Number:
        if isinstance(v, float) and not math.isfinite(v):
            raise self.error(f"this number is not finite ({v!r})", span,
                             hint="numbers must be finite; check for overflow (e.g. 1e999)",
                             code="non-finite", ctx=ctx)
        if isinstance(v, int) and abs(v) > self.limits.max_integer:
            raise self.limit("max_integer", f"the integer {v:.6g} is too large", span, ctx=ctx)
        return v

    def unary(self, kind: str, v: Value, node: Node, ctx: Ctx) -> Value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error("true/false are not numbers" if isinstance(v, bool)
                             else f"{v!r} is not a number", self.span(ctx.file, node),
                             code="bad-value", ctx=ctx)
        return -v if kind == "neg" else +v

    def binary(self, kind: str, a: Value, b: Value, node: Node, ctx: Ctx) -> Value:
        span = self.span(ctx.file, node)
        if isinstance(a, bool) or isinstance(b, bool):
            raise self.error("true/false are not numbers", span, code="bad-value", ctx=ctx)
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            raise self.error("names are not numbers", span, code="bad-value", ctx=ctx)
        if kind == "add":
            return self.checked(a + b, span, ctx)
        if kind == "sub":
            return self.checked(a - b, span, ctx)
        if kind == "mul":
            return self.checked(a * b, span, ctx)
        if b == 0:
            raise self.error(f"division by zero in {self._OPS[kind]!r}", span,
                             code="division-by-zero", ctx=ctx)
        if kind == "div":  # ints stay ints when the division is exact
            if isinstance(a, int) and isinstance(b, int) and a % b == 0:
                return a // b
            return self.checked(a / b, span, ctx)
        if kind == "floordiv":
            return self.checked(a // b, span, ctx)
        return self.checked(a % b, span, ctx)
