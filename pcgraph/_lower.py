"""Parse tree → ``ModelIR``: parameters and arithmetic, loops, blocks, includes, chains, groups.

Lowering walks the tree that ``_syntax.parse`` returned (parse first, then lower: lark positions
stay exact). It evaluates every expression (no ``eval``: a small arithmetic interpreter), expands
``for`` loops and ``use`` of blocks in place, reads included files, and produces the flat IR.
Every problem becomes a ``Diagnostic`` with a span; all of them are raised together as one
``PcgError``. Node names are *not* checked here (an edge to an undeclared node still lowers): the
validator reports those with the full picture.

Scopes are lexical. A file's top level and its model body hold parameters and blocks; every loop
iteration and every block expansion opens a child scope (loop variable, block arguments, local
``param``). A block body sees the scope it was defined in plus its arguments, never its caller's.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

from lark import Token

from . import _limits
from ._diagnostics import Diagnostic, PcgError, did_you_mean, normalise_newlines
from ._ir import (
    EdgeIR,
    EnergyIR,
    ModelIR,
    NodeIR,
    ParamIR,
    PriorIR,
    QueryIR,
    SettingsIR,
    Span,
    TermIR,
    TransformIR,
)
from ._registry import ENERGY_ARGS, LEARNED_PRECISIONS
from ._lower_expr import Expressions
from ._lower_loops import LoopsAndBlocks
from ._lower_scope import Number, Value, Abort, Block, Ctx, Fail, Out, Scope, Var
from ._syntax import Node, read_source

__all__ = ["lower"]

TERM_OPTIONS = ("pre", "bias", "init")  # keyword arguments that belong to the term, not the transform


def _callee(val: Node) -> str | None:
    """The name of ``name`` or ``name(args)`` (``None`` for anything else)."""
    if isinstance(val, Node) and val.data in ("var", "call"):
        return str(val.children[0])
    return None


def lower(
    tree: Node,
    file: str = "<string>",
    text: str | None = None,
    *,
    parse: Callable[[str, str], Node] | None = None,
) -> tuple[ModelIR, dict[str, str]]:
    """Lower a parsed file to its model. Returns ``(model, sources)``; ``sources`` holds the text
    of the file and of every included file. Raises ``PcgError`` with every problem found.
    The tree is consumed: the model's statements are taken out of it as they are lowered."""
    if parse is None:
        from ._syntax import parse
    if text is not None:
        text = normalise_newlines(text)
    low = _Lowering(file, text, parse)
    try:
        model = low.run(tree)
    except Abort:
        model = None
    if low.diags:
        diags = sorted(dict.fromkeys(low.diags), key=lambda d: (d.span.file != file, d.span))
        raise PcgError(diags, low.sources)
    assert model is not None
    return model, low.sources


class _Lowering(Expressions, LoopsAndBlocks):
    """The lowering of one file (and its includes): statements, declarations and files here;
    loops and block uses in ``_lower_loops``, names and expressions in ``_lower_expr``."""

    def __init__(self, file: str, text: str | None, parse):
        self.file = file
        self.parse = parse
        self.sources: dict[str, str] = {file: text} if text is not None else {}
        self.diags: list[Diagnostic] = []
        self.out = Out()
        self.params: list[Var] = []
        self.param_names: list[str] = []
        self.include_stack: list[Path] = []
        self.included: set[Path] = set()
        self.active_blocks: list[str] = []
        self.limits = _limits.current()
        self.iterations = 0  # loop iterations run so far, all loops together

    def limit(self, name: str, what: str, span: Span, ctx: Ctx | None = None) -> Abort:
        msg, hint = _limits.exceeded(name, what)
        self.error(msg, span, hint=hint, code="limit", ctx=ctx)
        return Abort()

    # ---- diagnostics ---------------------------------------------------------------------------
    def error(self, message: str, span: Span, hint: str | None = None, code: str = "lower",
              ctx: Ctx | None = None) -> Fail:
        if ctx is not None and ctx.trace:
            name, site = ctx.trace[-1]
            where = f"in block {name!r} used at {site}"
            hint = f"{hint} ({where})" if hint else where
        self.diags.append(Diagnostic("error", message, span, hint=hint, code=code))
        return Fail()

    @staticmethod
    def span(file: str, x) -> Span:
        if type(x) is Node:
            lo, hi = x.lo, x.hi
            if lo is None:
                return Span(file, 0, 0, 0, 0)
            return Span(file, lo.line, lo.column, hi.end_line, hi.end_column)
        return Span(file, x.line, x.column, x.end_line, x.end_column)

    # ---- files ---------------------------------------------------------------------------------
    def run(self, tree: Node) -> ModelIR | None:
        scope = Scope()
        ctx = Ctx(self.file, scope)
        real = Path(self.file)
        if real.is_file():
            self.include_stack.append(real.resolve())
            self.included.add(real.resolve())
        models = self.top_level(tree, ctx, main=True)
        if not models:
            self.error("no model in this file: write `model NAME { ... }`",
                       Span(self.file, 1, 1, 1, 1), code="no-model")
            return None
        for extra in models[1:]:
            self.error(f"a file holds one model; {str(extra.children[0])!r} is a second one",
                       self.span(self.file, extra.children[0]),
                       hint="move it to its own file and share blocks with `include`",
                       code="duplicate")
        return self.model(models[0], ctx)

    def top_level(self, tree: Node, ctx: Ctx, main: bool) -> list[Node]:
        """Declarations of a file (params, blocks, includes); returns its model trees."""
        models = []
        for st in tree.children:
            if st.data == "model":
                models.append(st)
            else:
                self.declaration(st, ctx, listed=main)
        return models

    def declaration(self, st: Node, ctx: Ctx, listed: bool) -> None:
        try:
            if st.data == "param_stmt":
                self.param_stmt(st, ctx, listed=listed)
            elif st.data == "block_def":
                self.block_def(st, ctx)
            elif st.data == "include_stmt":
                self.include(st, ctx)
        except Fail:
            pass

    def include(self, st: Node, ctx: Ctx) -> None:
        tok = st.children[0]
        rel = str(tok)[1:-1]
        span = self.span(ctx.file, tok)
        base_file = Path(ctx.file)
        base = base_file.parent if base_file.is_file() else Path.cwd()
        if not rel:
            raise self.error("empty include path", span, code="include")
        if os.path.isabs(rel):
            raise self.error(f"include path {rel!r} is absolute", span,
                             hint="write it relative to the including file", code="include")
        target = (base / rel).resolve()
        root = base.resolve()
        if target != root and root not in target.parents:
            raise self.error(
                f"include {rel!r} leaves the directory of {ctx.file}",
                span,
                hint="included files must lie in the including file's directory or below it",
                code="include",
            )
        if target in self.include_stack:
            names = [p.name for p in self.include_stack[self.include_stack.index(target):]]
            raise self.error("include cycle: " + " -> ".join(names + [target.name]), span,
                             code="include")
        if target in self.included:
            return  # already pulled in (a diamond of includes): once is enough
        if not rel.endswith(".pcg"):  # never read (nor echo into an error) other files
            raise self.error(f"include {rel!r} is not a .pcg file", span,
                             hint="only .pcg files can be included", code="include")
        if len(self.include_stack) > self.limits.max_include_depth:
            raise self.limit("max_include_depth", f"include {rel!r} is {len(self.include_stack)}"
                             " files deep", span)
        display = os.path.normpath(str(base_file.parent / rel)) if base_file.is_file() else os.path.normpath(rel)
        try:
            text = read_source(target, span)
        except PcgError as e:
            msg = e.diagnostics[0].message.replace(f"cannot read {target}", f"cannot include {rel!r}")
            raise self.error(msg, span, hint=e.diagnostics[0].hint, code="include")
        self.included.add(target)
        self.sources[display] = text
        try:
            tree = self.parse(text, display)
        except PcgError as e:
            self.diags.extend(e.diagnostics)
            return
        self.include_stack.append(target)
        try:
            self.top_level(tree, ctx.child(file=display), main=False)  # its models are ignored
        finally:
            self.include_stack.pop()

    # ---- the model -----------------------------------------------------------------------------
    def model(self, tree: Node, file_ctx: Ctx) -> ModelIR:
        name_tok, *body = tree.children
        # the tree gives up its statements: each is dropped once lowered (blocks keep theirs), so
        # that a large model's tree is freed while its IR grows
        del tree.children[1:]
        ctx = file_ctx.child(scope=Scope(file_ctx.scope))
        # declarations first: parameters, blocks and includes are visible to the whole body
        rest = []
        for st in body:
            if st.data in ("param_stmt", "block_def", "include_stmt"):
                self.declaration(st, ctx, listed=True)
            else:
                rest.append(st)
        del body
        self.statements(rest, ctx, consume=True)
        o = self.out
        settings = SettingsIR(
            tuple(sorted((k, v) for k, (v, _) in o.settings.items())),
            o.settings_span or self.span(self.file, tree),
        )
        params = tuple(
            ParamIR(n, v.value, v.used, v.span)  # type: ignore[arg-type]
            for n, v in zip(self.param_names, self.params)
        )
        return ModelIR(
            name=str(name_tok),
            nodes=tuple(o.nodes),
            edges=tuple(o.edges),
            amortised=tuple(o.amortised),
            queries=tuple(o.queries),
            settings=settings,
            params=params,
            source=self.file,
            span=self.span(self.file, tree),
        )

    def statements(self, stmts: list, ctx: Ctx, consume: bool = False) -> None:
        """Lower ``stmts`` in order; with ``consume``, each is removed from the list once done."""
        for i, st in enumerate(stmts):
            if consume:
                stmts[i] = None
            try:
                getattr(self, st.data)(st, ctx)
            except Fail:
                pass

    # ---- declarations --------------------------------------------------------------------------
    def param_stmt(self, st: Node, ctx: Ctx, listed: bool = False) -> None:
        for d in st.children:
            name_tok, expr = d.children
            name = str(name_tok)
            span = self.span(ctx.file, d)
            self.check_free(name, span, ctx, "parameter")
            value = self.number(expr, ctx)
            var = Var(value, "param", span, listed=listed)
            ctx.scope.vars[name] = var
            if listed and ctx.file == self.file:
                self.params.append(var)
                self.param_names.append(name)

    def check_free(self, name: str, span: Span, ctx: Ctx, what: str) -> None:
        old = ctx.scope.var(name)
        if old is not None:
            kind = {"param": "parameter", "loop": "loop variable", "arg": "block argument"}[old.kind]
            raise self.error(f"{what} {name!r} is already defined as a {kind} at {old.span}",
                             span, hint="pick another name", code="duplicate", ctx=ctx)
        if name in ("true", "false"):
            raise self.error(f"{name!r} cannot be a {what} name", span, code="bad-name", ctx=ctx)

    def block_def(self, st: Node, ctx: Ctx) -> None:
        name_tok, *rest = st.children
        params, body = [], []
        for c in rest:
            if isinstance(c, Token):
                params.append(str(c))
            elif c is not None:
                body.append(c)
        name = str(name_tok)
        span = self.span(ctx.file, name_tok)
        old = ctx.scope.block(name)
        if old is not None:
            raise self.error(f"block {name!r} is already defined at {old.span}", span,
                             code="duplicate")
        dup = {p for p in params if params.count(p) > 1}
        if dup:
            raise self.error(f"block {name!r} names parameter {sorted(dup)[0]!r} twice", span,
                             code="duplicate")
        ctx.scope.blocks[name] = Block(name, tuple(params), body, ctx.file, ctx.scope, span)

    def include_stmt(self, st: Node, ctx: Ctx) -> None:
        raise self.error("include belongs at the top of a file or of a model body",
                         self.span(ctx.file, st), code="misplaced", ctx=ctx)

    def nested_block_def(self, st: Node, ctx: Ctx) -> None:
        raise self.error("blocks are defined at the top of a file or of a model body",
                         self.span(ctx.file, st.children[0]), code="misplaced", ctx=ctx)

    # ---- settings, nodes, edges, queries -------------------------------------------------------
    def settings_stmt(self, st: Node, ctx: Ctx) -> None:
        if self.out.settings_span is None:
            self.out.settings_span = self.span(ctx.file, st)
        for s in st.children:
            key_tok, val = s.children
            key, span = str(key_tok), self.span(ctx.file, s)
            try:
                if key in self.out.settings:
                    raise self.error(f"setting {key!r} is set twice (first at "
                                     f"{self.out.settings[key][1]})", span, code="duplicate",
                                     ctx=ctx)
                if isinstance(val, Node) and val.data == "call":
                    raise self.error(f"setting {key!r} takes a number or a name, not a call",
                                     self.span(ctx.file, val), code="bad-value", ctx=ctx)
                self.out.settings[key] = (self.value(val, ctx), span)
            except Fail:
                pass

    def node_stmt(self, st: Node, ctx: Ctx) -> None:
        name_list, shape, *opts = st.children
        names = self.names(name_list, ctx)
        dims = []
        for e in shape.children:
            d = self.number(e, ctx)
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                hint = "use // for integer division" if isinstance(d, float) else None
                raise self.error(f"a shape holds positive integers; this is {d!r}",
                                 self.span(ctx.file, e), hint=hint, code="bad-shape", ctx=ctx)
            dims.append(d)
        if math.prod(dims) > self.limits.max_node_elements:
            raise self.limit("max_node_elements", f"shape {dims} has {math.prod(dims):,} "
                             "elements", self.span(ctx.file, shape), ctx=ctx)
        if len(self.out.nodes) + len(names) > self.limits.max_nodes:
            raise self.limit("max_nodes", "this declaration takes the model to "
                             f"{len(self.out.nodes) + len(names):,} nodes",
                             self.span(ctx.file, st), ctx=ctx)
        kw: dict = {}
        for o in opts:
            key_tok, val = o.children
            key = str(key_tok)
            span = self.span(ctx.file, o)
            if key in kw:
                raise self.error(f"node option {key!r} is given twice", span, code="duplicate",
                                 ctx=ctx)
            if key == "energy":
                kind, args = self.call(val, ctx, ENERGY_ARGS.get(_callee(val), ("precision",)),
                                       names_ok=LEARNED_PRECISIONS)
                prec = args.get("precision", 1.0)
                kw["energy"] = EnergyIR(kind, prec if isinstance(prec, str) else float(prec),
                                        float(args.get("scale", 1.0)))
            elif key == "prior":
                kind, args = self.call(val, ctx, ("mean", "std"))
                kw["prior"] = PriorIR(kind, float(args.get("mean", 0.0)), float(args.get("std", 1.0)))
            else:  # act, init
                v = self.value(val, ctx)
                if not isinstance(v, str) or isinstance(val, Node) and val.data == "string":
                    raise self.error(f"{key} takes a name (e.g. {key} = "
                                     f"{'relu' if key == 'act' else 'mem'}), not {v!r}",
                                     self.span(ctx.file, val), code="bad-value", ctx=ctx)
                kw[key] = v
        for name, span in names:
            self.out.nodes.append(NodeIR(name, tuple(dims), span=span, **kw))

    def call(self, val: Node, ctx: Ctx, names: tuple[str, ...],
             names_ok: frozenset = frozenset()) -> tuple[str, dict[str, Number | str]]:
        """``gaussian`` or ``gaussian(2.0)`` / ``gaussian(precision = 2.0)`` → (kind, {arg: number});
        an argument may also be one of the identifiers ``names_ok`` (``precision = learned``)."""
        if val.data == "var":
            return str(val.children[0]), {}
        if val.data != "call":
            raise self.error("expected a name such as gaussian, or a call such as gaussian(0, 1)",
                             self.span(ctx.file, val), code="bad-value", ctx=ctx)
        kind_tok, args = val.children
        pos, kws = self.arguments(args, ctx)
        if len(pos) > len(names):
            raise self.error(f"{kind_tok} takes at most {len(names)} argument(s) "
                             f"({', '.join(names)}), got {len(pos)}", self.span(ctx.file, val),
                             code="bad-args", ctx=ctx)
        out = dict(zip(names, pos))
        for k, (v, span) in kws.items():
            if k not in names:
                raise self.error(f"{kind_tok} has no argument {k!r}", span,
                                 hint=did_you_mean(k, names) or f"it takes {', '.join(names)}",
                                 code="bad-args", ctx=ctx)
            if k in out:
                raise self.error(f"argument {k!r} is given twice", span, code="duplicate", ctx=ctx)
            out[k] = v
        for k, v in out.items():
            if isinstance(v, str) and v in names_ok:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                also = f" or one of {', '.join(sorted(names_ok))}" if names_ok else ""
                raise self.error(f"{kind_tok}: {k} must be a number{also}, got {v!r}",
                                 self.span(ctx.file, val), code="bad-value", ctx=ctx)
        return str(kind_tok), out

    def edge_stmt(self, st: Node, ctx: Ctx) -> None:
        *chain, terms_tree = st.children
        ends = [self.endpoint(c, ctx) for c in chain[0::2]]
        arrows = [str(a) == "~>" for a in chain[1::2]]
        terms = tuple(self.term(t, ctx) for t in terms_tree.children)
        new = sum(len(a) * len(b) for a, b in zip(ends, ends[1:]))
        if len(self.out.edges) + len(self.out.amortised) + new > self.limits.max_edges:
            raise self.limit("max_edges", "this statement takes the model to "
                             f"{len(self.out.edges) + len(self.out.amortised) + new:,} edges",
                             self.span(ctx.file, st), ctx=ctx)
        for (srcs, dsts), amortised in zip(zip(ends, ends[1:]), arrows):
            for src, s_span in srcs:
                for dst, d_span in dsts:
                    span = Span(ctx.file, s_span.line, s_span.col, d_span.end_line, d_span.end_col)
                    e = EdgeIR(src, dst, terms, amortised=amortised, span=span)
                    (self.out.amortised if amortised else self.out.edges).append(e)

    def endpoint(self, t: Node, ctx: Ctx) -> list[tuple[str, Span]]:
        if isinstance(t, Node) and t.data == "group":
            return self.names(t.children[0], ctx)
        return [self.name(t, ctx)]

    def term(self, t: Node, ctx: Ctx) -> TermIR:
        opts: dict[str, tuple[Value, Span]] = {}
        chain = []
        for tr in t.children:
            kind_tok, args = tr.children[0], (tr.children[1] if len(tr.children) > 1 else None)
            pos, kws = self.arguments(args, ctx)
            for k in TERM_OPTIONS:
                if k in kws:
                    if k in opts:
                        raise self.error(f"term option {k!r} is given twice", kws[k][1],
                                         code="duplicate", ctx=ctx)
                    opts[k] = kws.pop(k)
            chain.append(TransformIR(
                str(kind_tok),
                tuple(pos),
                tuple(sorted((k, v) for k, (v, _) in kws.items())),
                span=self.span(ctx.file, tr),
            ))
        fields: dict = {}
        for k, (v, span) in opts.items():
            if k == "bias":
                if not isinstance(v, bool):
                    raise self.error(f"bias is true or false, not {v!r}", span,
                                     code="bad-value", ctx=ctx)
                fields["bias"] = v
            else:
                if not isinstance(v, str) or isinstance(v, bool):
                    example = "relu" if k == "pre" else "normal"
                    raise self.error(f"{k} takes a name (e.g. {k} = {example}), not {v!r}", span,
                                     code="bad-value", ctx=ctx)
                fields["pre" if k == "pre" else "weight_init"] = v
        return TermIR(tuple(chain), span=self.span(ctx.file, t), **fields)

    def arguments(self, args: Node | None, ctx: Ctx):
        """Positional values and ``{name: (value, span)}`` of an argument list."""
        pos: list[Value] = []
        kws: dict[str, tuple[Value, Span]] = {}
        for a in (args.children if args is not None else ()):
            if isinstance(a, Node) and a.data == "kwarg":
                k_tok, v = a.children
                span = self.span(ctx.file, a)
                if str(k_tok) in kws:
                    raise self.error(f"argument {str(k_tok)!r} is given twice", span,
                                     code="duplicate", ctx=ctx)
                kws[str(k_tok)] = (self.value(v, ctx), span)
            else:
                if kws:
                    raise self.error("a positional argument cannot follow keyword arguments",
                                     self.span(ctx.file, a), code="bad-args", ctx=ctx)
                pos.append(self.value(a, ctx))
        return pos, kws

    def query_stmt(self, st: Node, ctx: Ctx) -> None:
        name_tok, *items = st.children
        clamp, read, init, spans, partial = [], [], [], [], []
        for it in items:
            if it.data == "clamp_where":
                name, span = self.name(it.children[0], ctx)
                partial.append((name, str(it.children[1])))
                spans.append((name, span))
            elif it.data in ("clamp", "read"):
                names = self.names(it.children[0], ctx)
                (clamp if it.data == "clamp" else read).extend(n for n, _ in names)
                spans.extend(names)
            else:  # query_init: INIT name "=" NAME
                _, name_t, method = it.children
                name, span = self.name(name_t, ctx)
                init.append((name, str(method)))
                spans.append((name, span))
        self.out.queries.append(QueryIR(str(name_tok), tuple(clamp), tuple(read), tuple(init),
                                        span=self.span(ctx.file, st), name_spans=tuple(spans),
                                        partial=tuple(partial)))
