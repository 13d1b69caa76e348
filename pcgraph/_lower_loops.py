"""Lowering of ``for`` loops and ``use`` of blocks (part of ``_lower._Lowering``): each iteration
and each block expansion opens a child scope; the total iterations and the nesting are limited
before anything is expanded."""

from __future__ import annotations

from ._diagnostics import did_you_mean
from ._ir import Span
from ._lower_scope import Value, Block, Ctx, Fail, Scope, Var
from ._syntax import Node


class LoopsAndBlocks:
    """``for`` and ``use`` statements of ``_lower._Lowering`` (a mixin: ``self.error``,
    ``self.limit``, ``self.span`` and the expression methods are its)."""

    # ---- loops and blocks ----------------------------------------------------------------------
    def for_stmt(self, st: Node, ctx: Ctx) -> None:
        var_tok, lo_t, hi_t, *body = st.children
        bounds = []
        for t in (lo_t, hi_t):
            v = self.number(t, ctx)
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, int):
                raise self.error(f"loop bounds are integers; this one is {v!r}",
                                 self.span(ctx.file, t), hint="use // for integer division",
                                 code="bad-range", ctx=ctx)
            bounds.append(v)
        lo, hi = bounds
        a, b = self.span(ctx.file, lo_t), self.span(ctx.file, hi_t)
        rng = Span(ctx.file, a.line, a.col, b.end_line, b.end_col)
        if hi < lo - 1:
            raise self.error(f"range {lo}..{hi} runs backwards", rng,
                             hint=f"ranges count up and include both ends; {lo}..{lo - 1} is empty",
                             code="bad-range", ctx=ctx)
        n = hi - lo + 1
        runs = n * ctx.mult  # this loop's iterations, repeated by the loops around it
        if runs > self.limits.max_iterations:
            inner = f" ({n:,} times {ctx.mult:,} runs of the loops around it)" if ctx.mult > 1 else ""
            raise self.limit("max_iterations", f"range {lo}..{hi} makes {runs:,} loop iterations"
                             f"{inner}", rng, ctx=ctx)
        if self.iterations + n > self.limits.max_iterations:
            raise self.limit("max_iterations", f"range {lo}..{hi} takes the loops to "
                             f"{self.iterations + n:,} iterations in total", rng, ctx=ctx)
        self.nest(ctx, st)
        name = str(var_tok)
        self.check_free(name, self.span(ctx.file, var_tok), ctx, "loop variable")
        inner_ctx = ctx.child(depth=ctx.depth + 1, mult=ctx.mult * max(n, 1))
        for i in range(lo, hi + 1):
            self.iterations += 1
            scope = Scope(ctx.scope)
            scope.vars[name] = Var(i, "loop", self.span(ctx.file, var_tok), used=True)
            self.body(body, inner_ctx.child(scope=scope))

    def nest(self, ctx: Ctx, st: Node) -> None:
        """Refuse one more level of loops and block uses past ``max_nesting``."""
        if ctx.depth >= self.limits.max_nesting:
            kw = "for" if st.data == "for_stmt" else "use"
            at = self.span(ctx.file, st)
            raise self.limit("max_nesting", f"this `{kw}` is nested {ctx.depth + 1} deep in loops "
                             "and block uses", Span(at.file, at.line, at.col, at.line, at.col + 3),
                             ctx=ctx)

    def body(self, stmts: list, ctx: Ctx) -> None:
        """Statements of a loop or block body: local params in order, then everything else."""
        for st in stmts:
            try:
                if st.data == "param_stmt":
                    self.param_stmt(st, ctx)
                elif st.data == "block_def":
                    self.nested_block_def(st, ctx)
                else:
                    getattr(self, st.data)(st, ctx)
            except Fail:
                pass

    def use_stmt(self, st: Node, ctx: Ctx) -> None:
        name_tok, *args = st.children
        name = str(name_tok)
        span = self.span(ctx.file, st)
        block = ctx.scope.block(name)
        if block is None:
            known = ctx.scope.visible("blocks")
            hint = did_you_mean(name, known) or (
                f"defined blocks: {', '.join(sorted(known))}" if known
                else "define it with `block NAME(ARGS) { ... }` or include a file that does")
            raise self.error(f"unknown block {name!r}", self.span(ctx.file, name_tok), hint=hint,
                             code="unknown-block", ctx=ctx)
        if name in self.active_blocks:
            raise self.error(f"block {name!r} uses itself", span,
                             hint="blocks cannot be recursive; use a for loop", code="recursion",
                             ctx=ctx)
        pos: list[Value] = []
        kws: dict[str, Value] = {}
        for a in args:
            if a is None:
                continue
            if isinstance(a, Node) and a.data in ("kwarg", "name_kwarg"):
                k_tok, v = a.children
                k = str(k_tok)
                if k not in block.params:
                    raise self.error(f"block {name!r} has no parameter {k!r}",
                                     self.span(ctx.file, a),
                                     hint=did_you_mean(k, block.params) or self._signature(block),
                                     code="block-args", ctx=ctx)
                if k in kws:
                    raise self.error(f"argument {k!r} is given twice", self.span(ctx.file, a),
                                     code="duplicate", ctx=ctx)
                kws[k] = self.name(v, ctx)[0] if a.data == "name_kwarg" else self.value(v, ctx)
            else:
                if kws:
                    raise self.error("a positional argument cannot follow keyword arguments",
                                     self.span(ctx.file, a), code="block-args", ctx=ctx)
                pos.append(self.name(a.children[0], ctx)[0] if isinstance(a, Node)
                           and a.data == "name_arg" else self.value(a, ctx))
        bound = dict(zip(block.params, pos))
        for k, v in kws.items():
            if k in bound:
                raise self.error(f"block {name!r}: {k!r} is given both by position and by name",
                                 span, code="block-args", ctx=ctx)
            bound[k] = v
        if len(pos) > len(block.params) or len(bound) != len(block.params):
            given = len(pos) + len(kws)
            missing = [p for p in block.params if p not in bound]
            detail = f"; missing {', '.join(missing)}" if missing and len(pos) <= len(block.params) else ""
            raise self.error(
                f"block {name!r} takes {len(block.params)} argument"
                f"{'' if len(block.params) == 1 else 's'}, got {given}{detail}",
                span, hint=self._signature(block), code="block-args", ctx=ctx)
        scope = Scope(block.scope)
        known = ctx.scope.visible("vars")
        for p in block.params:
            v = bound[p]
            note = None
            if isinstance(v, str) and (close := did_you_mean(v, known)):
                note = f"{v!r} is not a parameter; {close}"
            scope.vars[p] = Var(v, "arg", block.span, used=True, note=note)
        self.nest(ctx, st)
        self.active_blocks.append(name)
        try:
            self.body(block.body, Ctx(block.file, scope, ctx.trace + ((name, span),),
                                       ctx.depth + 1, ctx.mult))
        finally:
            self.active_blocks.pop()

    @staticmethod
    def _signature(block: Block) -> str:
        return f"defined at {block.span} as block {block.name}({', '.join(block.params)})"
