"""Every validation rule of a model, all problems at once.

``validate(model, sources)`` returns a list of ``Diagnostic`` (errors and warnings) sorted by
position; an empty list (or warnings only) means the model can be built. It never raises, whatever
the IR holds: undeclared names, duplicates and bad shapes are reported, not tripped over.

``sources`` maps file names to their text. It is optional and only sharpens positions: a node's
activation, a setting's key or a name inside an edge is located within the span of its declaration.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import Iterable, Mapping


from . import _limits
from ._diagnostics import Diagnostic, did_you_mean, normalise_newlines
from ._feasibility import energy_graph
from ._graph import natural_key
from ._ir import NO_SPAN, EdgeIR, ModelIR, Span, TermIR
from ._registry import (
    ACTIVATIONS,
    DEFAULT_SETTINGS,
    ENERGIES,
    INIT_METHODS,
    LEARNED_PRECISIONS,
    LINKED_ENERGIES,
    PRIORS,
    SETTINGS,
    WEIGHT_INITS,
)
from ._shapes import TRANSFORM_ARGS, TRANSFORMS, ShapeError, param_shapes, resolve_chain
from ._validate_queries import QueryRules, edge_label, first_at
from ._validate_queries import override_diagnostics as override_diagnostics

# allowed values of string settings (the registry's); other settings are typed by their default
SETTING_CHOICES: dict[str, frozenset[str]] = {
    k: frozenset(s.choices) for k, s in SETTINGS.items() if s.choices is not None}
_NONNEGATIVE = {k for k, s in SETTINGS.items() if s.minimum == "nonnegative"}
_POSITIVE = {k for k, s in SETTINGS.items() if s.minimum == "positive"}
_UPPER = {"steps": "max_steps", "epochs": "max_epochs", "batch_size": "max_batch_size",
          "seed": "max_seed"}  # integer settings bounded by a limit


def validate(model: ModelIR, sources: Mapping[str, str] | None = None) -> list[Diagnostic]:
    v = _Validator(model, sources)
    v.run()
    return sorted(v.out, key=lambda d: (d.span.file, d.span.line, d.span.col))


def errors(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diagnostics if d.severity == "error"]


class _Validator(QueryRules):
    def __init__(self, model: ModelIR, sources: Mapping[str, str] | None):
        self.m = model
        self.sources = dict(sources or {})
        self.out: list[Diagnostic] = []
        self._reported: set = set()
        self.nodes = {}  # first declaration of each name
        for n in model.nodes:
            self.nodes.setdefault(n.name, n)
        self.limits = _limits.current()
        self.n_params = 0  # trainable parameters counted so far
        self._starts: dict[str, list[int]] = {}  # line start offsets of each source

    # ------------------------------------------------------------------ helpers
    def error(self, code, msg, span, hint=None):
        self.out.append(Diagnostic("error", msg, span or NO_SPAN, hint, code))

    def warn(self, code, msg, span, hint=None):
        self.out.append(Diagnostic("warning", msg, span or NO_SPAN, hint, code))

    def _text(self, file: str) -> str | None:
        if file not in self.sources:
            from ._syntax import read_source

            try:
                self.sources[file] = read_source(file)
            except Exception:  # noqa: BLE001 - positions are only sharpened when it reads
                self.sources[file] = None
        text = self.sources[file]
        if text is not None and file not in self._starts:
            text = self.sources[file] = normalise_newlines(text)
            self._starts[file] = [0] + [m.end() for m in re.finditer("\n", text)]
        return text

    def _offset(self, file: str, line: int, col: int) -> int:
        starts = self._starts[file]
        if line - 1 >= len(starts):
            return len(self.sources[file])
        return starts[max(line, 1) - 1] + col - 1

    def _line_col(self, file: str, i: int) -> tuple[int, int]:
        starts = self._starts[file]
        line = bisect.bisect_right(starts, i)
        return line, i - starts[line - 1] + 1

    def locate(self, span: Span, word: str, nth: int = 0) -> Span:
        """The ``nth`` occurrence of ``word`` (a whole word) inside ``span``, or ``span`` itself."""
        if span.line <= 0 or not word:
            return span
        text = self._text(span.file)
        if not text:
            return span
        start = self._offset(span.file, span.line, span.col)
        end = (self._offset(span.file, span.end_line, span.end_col) if span.end_line >= span.line
               else start)
        pat = re.compile(r"(?<![\w.])" + re.escape(word) + r"(?![\w])")
        hits = list(pat.finditer(text, start, max(end, start)))
        if len(hits) <= nth:  # the span may cover only a name: look on along its last line
            eol = text.find("\n", max(end, start))
            hits = list(pat.finditer(text, start, len(text) if eol < 0 else eol))
        if len(hits) <= nth:
            return span
        line, col = self._line_col(span.file, hits[nth].start())
        return Span(span.file, line, col, line, col + len(word))

    def undefined(self, name: str, where: str, span: Span) -> None:
        hint = did_you_mean(name, self.nodes) or "declare it: `node " + name + ": [N]`"
        self.error("undefined-name", f"{where} names undefined node {name!r}", span, hint)

    # --------------------------------------------------------------------- rules
    def run(self) -> None:
        self.check_nodes()
        self.check_edges(self.m.edges)
        self.check_edges(self.m.amortised)
        self.check_energy_structure()
        self.check_settings()
        self.check_params()
        self.check_queries()
        self.check_amortised_targets()
        self.check_init_plans()

    def check_nodes(self) -> None:
        for i, n in enumerate(self.m.nodes):
            first = self.nodes[n.name]
            if first is not n:
                self.error(
                    "duplicate-node",
                    f"node {n.name!r} is declared twice{first_at(first.span)}",
                    self.locate(n.span, n.name, self._nth_decl(i)),
                    "rename one of them or delete the second declaration",
                )
            if not n.shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                                  for d in n.shape):
                self.error("bad-shape", f"node {n.name!r} has shape {list(n.shape)}; every "
                           "dimension must be a positive integer", n.span,
                           "write a shape like [784] or [1,28,28]")
            self.choice("unknown-activation", f"node {n.name!r}: activation", n.act,
                        ACTIVATIONS, n.span)
            self.choice("unknown-energy", f"node {n.name!r}: energy", n.energy.kind, ENERGIES,
                        n.span)
            if not (_positive(n.energy.precision) or n.energy.precision in LEARNED_PRECISIONS):
                self.error("bad-precision", f"node {n.name!r}: precision must be a positive "
                           f"number or one of {', '.join(sorted(LEARNED_PRECISIONS))}, got "
                           f"{n.energy.precision!r}",
                           self.locate(n.span, "precision"),
                           "use e.g. precision = 1, or precision = learned")
            if not _positive(n.energy.scale):
                self.error("bad-scale", f"node {n.name!r}: the laplace scale must be a positive "
                           f"number, got {n.energy.scale!r}", self.locate(n.span, "scale"),
                           "use e.g. energy = laplace(scale = 1)")
            if n.energy.kind == "bernoulli" and n.act != "identity":
                self.error("bernoulli-act", f"node {n.name!r}: a bernoulli node's prediction is "
                           f"a logit (the energy applies the sigmoid), so act = {n.act} would be "
                           "applied twice", self.locate(n.span, "act"),
                           "remove the act option of this node")
            if n.prior is not None:
                self.choice("unknown-prior", f"node {n.name!r}: prior", n.prior.kind, PRIORS,
                            n.span)
                if not _positive(n.prior.std):
                    self.error("bad-prior", f"node {n.name!r}: prior std must be positive, got "
                               f"{n.prior.std!r}", self.locate(n.span, "prior"),
                               "write prior = gaussian(mean, std) with std > 0")
            if n.init is not None:
                self.choice("unknown-init", f"node {n.name!r}: init method", n.init,
                            INIT_METHODS, n.span)

    def _nth_decl(self, i: int) -> int:
        """How many earlier declarations of node ``i``'s name start at the same place
        (``node h, h: [4]``), so the caret lands on the right occurrence."""
        n = self.m.nodes[i]
        return sum(1 for o in self.m.nodes[:i] if o.name == n.name
                   and (o.span.file, o.span.line, o.span.col) == (n.span.file, n.span.line,
                                                                  n.span.col))

    def choice(self, code, what, value, allowed, span, msg=None) -> bool:
        if value in allowed:
            return True
        hint = did_you_mean(str(value), allowed) or "one of: " + ", ".join(sorted(allowed))
        where = self.locate(span, str(value))
        if (code, where, value) in self._reported:  # `node a, b: [4] act = rleu`: say it once
            return False
        self._reported.add((code, where, value))
        self.error(code, msg or f"{what} {value!r} is unknown", where, hint)
        return False

    def check_edges(self, edges: tuple[EdgeIR, ...]) -> None:
        seen: dict[tuple[str, str], EdgeIR] = {}
        for e in edges:
            arrow = "~>" if e.amortised else "->"
            ok = True
            for end in dict.fromkeys((e.src, e.dst)):
                if end not in self.nodes:
                    self.undefined(end, f"{edge_label(e)}", self.locate(e.span, end))
                    ok = False
            if e.src == e.dst:
                self.error("self-loop", f"{edge_label(e)} connects node {e.src!r} to itself",
                           e.span, "a node cannot predict itself; remove the edge or add an "
                           "intermediate node")
                ok = False
            if (e.src, e.dst) in seen:
                first = seen[(e.src, e.dst)]
                self.error(
                    "duplicate-edge",
                    f"{edge_label(e)} is declared twice{first_at(first.span)}",
                    e.span,
                    f"write one edge and sum its terms with `+`: "
                    f"`{e.src} {arrow} {e.dst} : dense + identity`",
                )
            else:
                seen[(e.src, e.dst)] = e
            if not e.terms:
                self.error("empty-edge", f"{edge_label(e)} has no transform", e.span,
                           f"give it one: `{e.src} {arrow} {e.dst} : dense`")
            for term in e.terms:
                self.check_term(e, term, ok)

    def check_term(self, e: EdgeIR, term: TermIR, names_ok: bool) -> None:
        span = term.span if term.span.line > 0 else e.span
        self.choice("unknown-activation", f"{edge_label(e)}: pre-activation", term.pre,
                    ACTIVATIONS, span)
        self.choice("unknown-weight-init", f"{edge_label(e)}: weight init", term.weight_init,
                    WEIGHT_INITS, span)
        known = True
        for t in term.chain:
            tspan = t.span if t.span.line > 0 else span
            if t.kind not in TRANSFORMS:
                hint = did_you_mean(t.kind, TRANSFORMS) or "one of: " + ", ".join(sorted(TRANSFORMS))
                self.error("unknown-transform", f"{edge_label(e)}: unknown transform {t.kind!r}",
                           self.locate(tspan, t.kind), hint)
                known = False
                continue
            allowed = TRANSFORM_ARGS[t.kind]
            for k, _ in t.args:
                if k not in allowed:
                    hint = (did_you_mean(k, allowed) if allowed else None) or (
                        f"{t.kind} takes " + (", ".join(allowed) if allowed else "no arguments"))
                    self.error("unknown-argument", f"{edge_label(e)}: {t.kind} has no argument {k!r}",
                               self.locate(tspan, k), hint)
                    known = False
            if len(t.posargs) > len(allowed):
                self.error("too-many-arguments", f"{edge_label(e)}: {t.kind} takes at most "
                           f"{len(allowed)} positional argument(s), got {len(t.posargs)}", tspan,
                           f"{t.kind} takes " + (", ".join(allowed) if allowed else "no arguments"))
                known = False
        if not (known and names_ok and term.chain):
            return
        src, dst = self.nodes[e.src], self.nodes[e.dst]
        try:
            steps = resolve_chain(term.chain, tuple(src.shape), tuple(dst.shape))
            self.count_params(e, steps, term.bias)
        except ShapeError as err:
            t = err.transform
            where = t.span if t is not None and t.span.line > 0 else span
            self.error(
                "shape-mismatch",
                f"{edge_label(e)} (from {list(src.shape)} to {list(dst.shape)}): {err}",
                where,
                err.hint or "check the node shapes and the transforms' out= sizes",
            )
        except Exception as err:  # a malformed argument the shape rules did not anticipate
            self.error("shape-mismatch", f"{edge_label(e)}: {err}", span)

    def count_params(self, e: EdgeIR, steps, bias: bool) -> None:
        """Add the parameters of a term; the edge that takes the model over ``max_params`` is
        reported (once)."""
        before = self.n_params
        for step in steps:
            self.n_params += sum(math.prod(s) for s in param_shapes(step, bias).values())
        limit = self.limits.max_params
        if before <= limit < self.n_params:
            msg, hint = _limits.exceeded(
                "max_params", f"{edge_label(e)} takes the model to {self.n_params:,} parameters")
            self.error("limit", msg, e.span, hint)

    def check_energy_structure(self) -> None:
        G = energy_graph(self.m)
        for name, n in self.nodes.items():
            if G.degree(name) == 0:
                self.error(
                    "isolated-node",
                    f"node {name!r} has no energy edges: nothing predicts it and it predicts nothing",
                    self.locate(n.span, name),
                    f"connect it with `->` (e.g. `{name} -> other : dense`) or remove it; "
                    "amortised `~>` edges are not part of the energy",
                )
                continue
            if n.energy.kind in LINKED_ENERGIES and G.out_degree(name) > 0:
                kids = ", ".join(sorted(G.successors(name), key=natural_key))
                kind = n.energy.kind
                self.error(
                    f"{kind}-not-leaf",
                    f"node {name!r} has {kind} energy but predicts other nodes ({kids})",
                    self.locate(n.span, kind),
                    f"{kind} energy is only for output leaves; use energy = gaussian",
                )
            if n.prior is not None and G.in_degree(name) > 0:
                parents = ", ".join(sorted(G.predecessors(name), key=natural_key))
                self.error(
                    "prior-with-parents",
                    f"node {name!r} declares a prior but has parents ({parents}); priors apply "
                    "only to parentless nodes and would be ignored",
                    self.locate(n.span, "prior"),
                    "remove the prior (its parents' prediction already constrains it)",
                )

    def check_settings(self) -> None:
        s = self.m.settings
        for key, value in s.values:
            span = self.locate(s.span, key)
            rest = Span(span.file, span.line, span.col, s.span.end_line, s.span.end_col)
            if key not in DEFAULT_SETTINGS:
                hint = did_you_mean(key, DEFAULT_SETTINGS) or (
                    "known settings: " + ", ".join(DEFAULT_SETTINGS))
                self.error("unknown-setting", f"unknown setting {key!r}", span, hint)
                continue
            default = DEFAULT_SETTINGS[key]
            expected = type(default).__name__
            if isinstance(default, str):
                good = isinstance(value, str)
            elif isinstance(default, int):
                good = isinstance(value, int) and not isinstance(value, bool)
            else:  # float: ints are fine
                good = isinstance(value, (int, float)) and not isinstance(value, bool)
                expected = "number"
                if good and not math.isfinite(value):
                    good, expected = False, "finite number"
            if not good:
                self.error("setting-type", f"setting {key!r} must be a {expected}, got "
                           f"{value!r}", span, f"for example: {key} = {default}")
                continue
            if key in SETTING_CHOICES:
                self.choice(f"unknown-{key}" if key != "init" else "unknown-init",
                            f"setting {key}:", value, SETTING_CHOICES[key], rest)
            elif key in _NONNEGATIVE and value < 0:
                self.error("setting-range", f"setting {key!r} must be >= 0, got {value!r}", span)
            elif key in _POSITIVE and value <= 0:
                self.error("setting-range", f"setting {key!r} must be > 0, got {value!r}", span)
            elif key in _UPPER and value > getattr(self.limits, _UPPER[key]):
                msg, hint = _limits.exceeded(_UPPER[key], f"setting {key!r} is {value:,}")
                self.error("limit", msg, span, hint)

    def check_params(self) -> None:
        for p in self.m.params:
            if not p.used:
                self.warn("unused-param", f"parameter {p.name!r} is never used",
                          self.locate(p.span, p.name), "remove it or use it")

def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < math.inf
