"""Validation rules of queries and of what depends on them: undefined or repeated names per role,
partial observations, unconstrained components, amortised initialisers, init plans (forward /
amortised where impossible), and init overrides given outside the file. ``_validate._Validator``
inherits these rules; they report through its ``error``/``warn``/``locate``."""

from __future__ import annotations

import bisect
import collections
import re
from typing import Mapping

import networkx as nx

from ._diagnostics import Diagnostic, did_you_mean, option_span
from ._feasibility import (
    energy_graph,
    name_list,
    plan_diagnostics,
    plan_with_problems,
    problem_diagnostic,
)
from ._graph import natural_key
from ._ir import EdgeIR, ModelIR, QueryIR, Span
from ._registry import INIT_METHODS


_ROLE_KEYWORD = re.compile(r"\b(clamp|read|init)\b")


class QueryRules:
    """The query rules of ``_validate._Validator`` (a mixin: ``self.m`` is the model)."""

    def _role_keywords(self, file: str, text: str) -> tuple[list[int], list[int], list[str]]:
        """Starts, ends and words of every ``clamp``/``read``/``init`` in ``file`` (found once a
        file: looking back from each name instead was quadratic in a query's length)."""
        cache = self.__dict__.setdefault("_role_keywords_cache", {})
        if file not in cache:
            hits = list(_ROLE_KEYWORD.finditer(text))
            cache[file] = ([m.start() for m in hits], [m.end() for m in hits],
                           [m.group(1) for m in hits])
        return cache[file]

    def role_spans(self, q: QueryIR) -> dict[tuple[str, str], list[Span]]:
        """Spans of the names of a query by role: ``{("clamp"|"read"|"init", name): [spans]}``.

        The role of each name span is the last ``clamp``/``read``/``init`` keyword before it in
        the source; without the source, ``name_spans`` is taken to list clamp, read, init names
        in that order."""
        order = ([("clamp", n) for n in q.clamp] + [("read", n) for n in q.read]
                 + [("init", n) for n, _ in q.init])
        out: dict[tuple[str, str], list[Span]] = {}
        for i, (name, span) in enumerate(q.name_spans):
            role = None
            text = self._text(span.file) if span.line > 0 else None
            if text:
                off = self._offset(span.file, span.line, span.col)
                lo = (self._offset(span.file, q.span.line, q.span.col) if q.span.file == span.file
                      else 0)
                starts, ends, words = self._role_keywords(span.file, text)
                j = bisect.bisect_right(ends, off) - 1  # the last keyword ending by the name
                role = words[j] if j >= 0 and starts[j] >= max(0, min(lo, off)) else None
            if role is None and i < len(order) and order[i][1] == name:
                role = order[i][0]
            out.setdefault((role, name), []).append(span)
        return out

    def check_queries(self) -> None:
        G = energy_graph(self.m)
        seen: dict[str, QueryIR] = {}
        for q in self.m.queries:
            if q.name in seen:
                self.error("duplicate-query", f"query {q.name!r} is declared "
                           f"twice{first_at(seen[q.name].span)}", self.locate(q.span, q.name),
                           "rename one of them")
            else:
                seen[q.name] = q
            spans = self.role_spans(q)
            qspan = self.locate(q.span, q.name)

            def span_of(role, name, k=0):
                s = spans.get((role, name), [])
                return s[k] if k < len(s) else (s[-1] if s else qspan)

            partial = [n for n, _ in q.partial]
            for role, names in (("clamp", [*q.clamp, *partial]), ("read", q.read),
                                ("init", [n for n, _ in q.init])):
                for name in dict.fromkeys(names):
                    if name not in self.nodes:
                        self.undefined(name, f"query {q.name!r}", span_of(role, name))
            for role, names in (("clamp", q.clamp), ("read", q.read)):
                twice = [n for n, k in collections.Counter(names).items() if k > 1]
                for name in sorted(twice, key=natural_key):
                    self.warn("repeated-name", f"query {q.name!r} lists {name!r} twice in "
                              f"`{role}`", span_of(role, name, 1), "list it once")
            for name in sorted(set(q.clamp) & set(q.read), key=natural_key):
                self.error("clamped-and-read", f"query {q.name!r} both clamps and reads node "
                           f"{name!r}", span_of("read", name),
                           "a clamped node is held at data, so reading it returns the data; "
                           "remove it from `read` (or from `clamp`)")
            self.check_partial(q, span_of)
            seen_init: dict[str, int] = {}
            for name, method in q.init:
                k = seen_init[name] = seen_init.get(name, -1) + 1
                where = span_of("init", name, k)
                if k == 1:
                    self.error("duplicate-init", f"query {q.name!r} sets the init of {name!r} "
                               "twice", where, "keep one")
                self.choice("unknown-init", "", method, INIT_METHODS, where,
                            f"query {q.name!r}: init method {method!r} (for node {name!r}) "
                            "is unknown")
                if name in q.clamp and k == 0:
                    self.error("init-of-clamped", f"query {q.name!r} sets the init of "
                               f"{name!r}, which it clamps", where,
                               "clamped nodes hold data; remove the init")
            # a partly clamped node is free for feasibility, but its observed elements tie its
            # component to data
            clamped = {c for c in (*q.clamp, *partial) if c in self.nodes}
            if not clamped and not q.clamp:
                self.error("clamps-nothing", f"query {q.name!r} clamps no node", qspan,
                           "add `clamp x` with the node(s) that receive data")
                continue
            self.check_unconstrained(q, G, clamped, qspan)

    def check_partial(self, q: QueryIR, span_of) -> None:
        """``clamp NODE where MASK``: a node once, not also clamped whole; the mask a data name
        that is not a node's."""
        seen: set[str] = set()
        for name, mask in q.partial:
            where = span_of("clamp", name)
            if name in q.clamp:
                self.error("clamped-and-masked", f"query {q.name!r} clamps {name!r} both whole and "
                           f"where {mask!r}", where,
                           f"keep `clamp {name} where {mask}` for a partial observation, or "
                           f"`clamp {name}` for a full one")
            elif name in seen:
                self.error("repeated-mask", f"query {q.name!r} gives node {name!r} two masks",
                           where, "combine them into one mask in the data")
            seen.add(name)
            if mask in self.nodes:
                self.error("mask-is-a-node", f"query {q.name!r}: the mask {mask!r} of {name!r} "
                           "has the name of a node; the data cannot hold both", where,
                           f"rename the mask, e.g. `where {mask}_mask`")

    def check_unconstrained(self, q, G, clamped, span) -> None:
        loose = []
        for comp in nx.connected_components(G.to_undirected(as_view=True)):
            if len(comp) > 1 and not comp & clamped:
                loose += comp
        if loose:
            names = name_list(sorted(loose, key=natural_key))
            self.error(
                "unconstrained-nodes",
                f"query {q.name!r}: free nodes {names} are not connected to any clamped node, so "
                "their energy is unconstrained",
                span,
                "clamp one of them, or connect them with `->` edges to the clamped part",
            )

    def check_amortised_targets(self) -> None:
        if not self.m.queries:
            return
        targets = {a.dst for a in self.m.amortised}
        for e in self.m.amortised:
            if e.dst in self.nodes and all(e.dst in q.clamp for q in self.m.queries):
                self.warn("amortised-never-used", f"{edge_label(e)} targets node "
                          f"{e.dst!r}, which every query clamps, so it never initialises anything",
                          e.span, "point it at a node that some query leaves free, or remove it")
            chained = e.src in targets  # img ~> h ~> z
            if e.dst in self.nodes and e.src in self.nodes and not chained and not any(
                e.src in q.clamp for q in self.m.queries
            ):
                self.warn("amortised-unclamped-source", f"{edge_label(e)}: no query "
                          f"clamps its source {e.src!r}", e.span,
                          "an amortised initialiser reads data; start it at a clamped node")

    def check_init_plans(self) -> None:
        """forward (and amortised) requested where impossible, per query."""
        grouped: dict[tuple, list] = {}
        for i, q in enumerate(self.m.queries):
            try:
                _, problems = plan_with_problems(self.m, q)
            except Exception:  # pragma: no cover - the plan survives bad IR; be safe anyway
                continue
            for p in problems:
                if p.origin == "default":
                    key = ("default", i)
                elif p.origin == "query":
                    key = ("query", i, p.node)
                else:
                    key = ("node", p.node, p.method)
                grouped.setdefault(key, []).append((q, p))
        for key, items in grouped.items():
            q, p = items[0]
            if key[0] == "default":
                for d in plan_diagnostics(self.m, q, [pp for _, pp in items]):
                    if d.code == "forward-infeasible":
                        d = Diagnostic(d.severity, d.message.replace(
                            "init = forward is", "init = forward (model setting) is", 1),
                            self.locate(self.m.settings.span, "forward"), d.hint, d.code)
                    self.out.append(d)
            elif key[0] == "query":
                for _, pp in items:
                    self.out.append(problem_diagnostic(pp, q.name))
            else:  # a node's own init, possibly impossible in several queries
                names = ", ".join(dict.fromkeys(repr(qq.name) for qq, _ in items))
                d = problem_diagnostic(p, q.name)
                plural = "queries" if "," in names else "query"
                msg = (f"init = {p.method} is impossible for node {p.node!r} in {plural} {names}: "
                       f"{p.reason}")
                self.out.append(Diagnostic("error", msg, self.locate(p.span, p.method), d.hint,
                                           d.code))


def edge_label(e: EdgeIR) -> str:
    """``edge x -> h`` / ``amortised edge x ~> z``."""
    if e.amortised:
        return f"amortised edge {e.src} ~> {e.dst}"
    return f"edge {e.src} -> {e.dst}"


def first_at(span: Span) -> str:
    return f" (first at line {span.line})" if span.line > 0 else ""


def override_diagnostics(model: ModelIR, query: QueryIR,
                         overrides: Mapping[str, str] | None) -> list[Diagnostic]:
    """Problems of per-node init overrides given outside the file (``init_overrides`` of the API,
    ``--init-node`` of the CLI): unknown nodes, clamped nodes, unknown methods. Each is labelled
    by the option (``init_overrides``), since it has no place in the file."""
    if not overrides:
        return []
    where = option_span("init_overrides")
    nodes = [n.name for n in model.nodes]
    known, clamped = set(nodes), set(query.clamp)
    out = []
    for name, method in overrides.items():
        if name not in known:
            hint = did_you_mean(str(name), nodes) or f"nodes: {name_list(nodes)}"
            out.append(Diagnostic("error", f"init override {name}={method}: model {model.name!r} "
                                  f"has no node {name!r}", where, hint, "undefined-name"))
        elif name in clamped:
            out.append(Diagnostic("error", f"init override {name}={method}: query "
                                  f"{query.name!r} clamps {name!r}, so it is never initialised",
                                  where, "override only free nodes: "
                                  + name_list([n for n in nodes if n not in clamped]),
                                  "init-of-clamped"))
        if method not in INIT_METHODS:
            hint = did_you_mean(str(method), INIT_METHODS) or "one of: " + ", ".join(INIT_METHODS)
            out.append(Diagnostic("error", f"init override {name}={method}: unknown init method "
                                  f"{method!r}", where, hint, "unknown-init"))
    return out
