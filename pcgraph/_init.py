"""Activity initialisers (DESIGN §2): a small registry of plain functions.

An initialiser is ``f(net, query, h, nodes, *, key, state, options) -> Acts``:

* ``h`` holds the clamped data (other entries are zeros),
* ``nodes`` are the (free) nodes that use this method, in natural order,
* ``key`` a PRNG key, ``state`` an optional pytree carried between batches (previous activities
  for ``null``, memories for ``mem``, ...; ``None`` here), ``options`` a dict of keyword options.

It returns full ``Acts``; only the entries of ``nodes`` are used. :func:`initialise` resolves the
method of every free node (API override > query ``init`` > node ``init`` > default; ``auto`` is
resolved per node by ``_feasibility.init_plan``: forward where Prop. 3.2 allows it), runs each
needed initialiser once and assembles the result with static selections. Adding a method is adding
one entry with :func:`register`.

Implemented here: ``zero``, ``random`` (N(a, b): options ``random_mean``, ``random_std``),
``forward``. Until ``mem`` / ``amortised`` are registered, nodes that ``auto`` assigns to them fall
back to ``zero`` (explicitly asking for an unregistered method is an error).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from ._energy import forward_acts
from ._feasibility import forward_order, init_plan
from ._network import Acts, Network, QueryPlan

Initialiser = Callable[..., Acts]
INITIALISERS: dict[str, Initialiser] = {}
AUTO_FALLBACK = "zero"  # for auto-assigned methods that are not registered yet


def register(name: str):
    def deco(fn: Initialiser) -> Initialiser:
        INITIALISERS[name] = fn
        return fn

    return deco


@register("zero")
def zero(net: Network, query: QueryPlan, h: Acts, nodes, *, key=None, state=None, options=None) -> Acts:
    return tuple(jnp.zeros_like(a) for a in h)


@register("random")
def random(net: Network, query: QueryPlan, h: Acts, nodes, *, key=None, state=None, options=None) -> Acts:
    options = options or {}
    a = float(options.get("random_mean", 0.0))
    b = float(options.get("random_std", 1.0))
    key = jax.random.PRNGKey(0) if key is None else key
    keys = jax.random.split(key, len(h))
    return tuple(a + b * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, h))


@register("forward")
def forward(net: Network, query: QueryPlan, h: Acts, nodes, *, key=None, state=None, options=None) -> Acts:
    """μ_v in topological order from the clamped nodes (``nodes`` must all be feasible)."""
    return forward_acts(net, h, _forward_order(net.plan, query, tuple(nodes)))


@functools.lru_cache(maxsize=256)
def _forward_order(netplan, query: QueryPlan, nodes: tuple[str, ...]) -> tuple[str, ...]:
    plan = {n: ("forward" if n in nodes else "clamped" if n in query.clamp else "other")
            for n in netplan.node_names}
    return tuple(forward_order(netplan.model, query.query, plan))


@functools.lru_cache(maxsize=256)
def resolve(netplan, query: QueryPlan, default: str | None, overrides: tuple = ()) -> dict[str, str]:
    """``{node: method}`` for every node (``"clamped"`` for clamped ones); static, cached."""
    model = netplan.model
    plan = init_plan(model, query.query, dict(overrides) or None, default)
    requested = {n.name: n.init for n in model.nodes if n.init is not None}
    requested.update(dict(query.init))
    requested.update(dict(overrides))
    glob = default if default is not None else model.settings.get("init")
    out = {}
    for n, m in plan.items():
        if m != "clamped" and m not in INITIALISERS:
            if requested.get(n, glob) != "auto":
                raise NotImplementedError(
                    f"initialisation {m!r} (node {n!r}) is not available; "
                    f"registered: {', '.join(sorted(INITIALISERS))}"
                )
            m = AUTO_FALLBACK
        out[n] = m
    return out


def initialise(
    net: Network,
    query: QueryPlan,
    h: Acts,
    *,
    default: str | None = None,
    overrides: Mapping[str, str] | None = None,
    key=None,
    state: Any = None,
    options: Mapping[str, Any] | None = None,
) -> Acts:
    """Initial activities: clamped entries from ``h``, every free node by its method."""
    query.check(net)
    methods = resolve(net.plan, query, default, tuple(sorted((overrides or {}).items())))
    by_method: dict[str, list[str]] = {}
    for n in net.plan.node_names:
        m = methods.get(n, "clamped")
        if m != "clamped":
            by_method.setdefault(m, []).append(n)
    results: dict[str, Acts] = {"clamped": h}
    for i, (m, nodes) in enumerate(sorted(by_method.items())):
        k = None if key is None else jax.random.fold_in(key, i)
        results[m] = INITIALISERS[m](net, query, h, tuple(nodes), key=k, state=state,
                                     options=dict(options or {}))
    out = []
    for gi, grp in enumerate(net.plan.groups):
        src = [methods.get(n, "clamped") for n in grp.names]
        if all(s == src[0] for s in src):
            out.append(results[src[0]][gi])
        else:
            out.append(jnp.stack([results[s][gi][i] for i, s in enumerate(src)]))
    return tuple(out)
