"""Build ``ModelIR`` directly in Python (tests do not depend on the parser)."""

from __future__ import annotations

from pcgraph import (
    EdgeIR,
    EnergyIR,
    ModelIR,
    NodeIR,
    PriorIR,
    QueryIR,
    SettingsIR,
    TermIR,
    TransformIR,
)


def node(name, shape, act="identity", energy="gaussian", precision=1.0, prior=None, init=None,
         scale=1.0):
    if isinstance(shape, int):
        shape = (shape,)
    return NodeIR(
        name,
        tuple(shape),
        act=act,
        energy=EnergyIR(energy, precision, scale),
        prior=None if prior is None else PriorIR("gaussian", *prior),
        init=init,
    )


def tr(kind, *posargs, **kwargs):
    return TransformIR(kind, tuple(posargs), tuple(sorted(kwargs.items())))


def term(*chain, pre="identity", bias=True, init="default"):
    chain = tuple(tr(c) if isinstance(c, str) else c for c in chain) or (tr("dense"),)
    return TermIR(chain, pre=pre, bias=bias, weight_init=init)


def dense(pre="identity", bias=True, init="default"):
    return term(tr("dense"), pre=pre, bias=bias, init=init)


def identity(pre="identity"):
    return term(tr("identity"), pre=pre, bias=False)


def edge(src, dst, *terms):
    return EdgeIR(src, dst, tuple(terms) or (dense(),))


def query(name, clamp=(), read=(), init=()):
    return QueryIR(name, tuple(clamp), tuple(read), tuple(init))


def model(name, nodes, edges, queries=(), **settings):
    return ModelIR(
        name,
        tuple(nodes),
        tuple(edges),
        queries=tuple(queries),
        settings=SettingsIR(tuple(sorted(settings.items()))),
    )


def mlp(sizes, act="tanh", *, out_energy="gaussian", out_act="identity", bias=True, name="mlp",
        init="default", pre=None, **settings):
    """``x -> h1 -> ... -> y`` with ``act`` on the hidden nodes (seed 004: activation on the
    target); with ``pre`` the activation is applied to the source instead (JPC)."""
    names = ["x"] + [f"h{i}" for i in range(1, len(sizes) - 1)] + ["y"]
    nodes = [node("x", sizes[0])]
    for n, s in zip(names[1:-1], sizes[1:-1]):
        nodes.append(node(n, s, act=act if pre is None else "identity"))
    nodes.append(node("y", sizes[-1], act=out_act, energy=out_energy))
    edges = []
    for i, (u, v) in enumerate(zip(names, names[1:])):
        p = "identity" if (pre is None or i == 0) else pre
        edges.append(edge(u, v, dense(pre=p, bias=bias, init=init)))
    queries = [query("train", ("x", "y")), query("test", ("x",), ("y",))]
    return model(name, nodes, edges, queries, **settings)


def resnet(depth, width, d_in, d_out, *, pre="relu", bias=False, name="resnet",
           out_energy="gaussian", **settings):
    """μPC's residual network: x -> h1 : dense; h{i-1} -> h{i} : dense(pre) + identity;
    h{depth} -> y : dense(pre)."""
    nodes = [node("x", d_in), node("y", d_out, energy=out_energy)]
    nodes += [node(f"h{i}", width) for i in range(1, depth + 1)]
    edges = [edge("x", "h1", dense(bias=bias))]
    for i in range(2, depth + 1):
        edges.append(edge(f"h{i-1}", f"h{i}", dense(pre=pre, bias=bias), identity()))
    edges.append(edge(f"h{depth}", "y", dense(pre=pre, bias=bias)))
    queries = [query("train", ("x", "y")), query("test", ("x",), ("y",))]
    settings.setdefault("parameterisation", "mupc")
    return model(name, nodes, edges, queries, **settings)


def chain(names, sizes, act="identity", *, bias=True, name="chain", queries=(), **settings):
    """A chain of nodes ``names[0] -> names[1] -> ...`` with dense edges."""
    nodes = [node(n, s, act=act) for n, s in zip(names, sizes)]
    edges = [edge(u, v, dense(bias=bias)) for u, v in zip(names, names[1:])]
    return model(name, nodes, edges, queries, **settings)


def linear_system_by_hand(net, free, clamped):
    """Per-sample quadratic form of F for a linear graph, built from the weights alone.

    ``free``: free node names (the order of the free vector); ``clamped``: ``{name: [B, d]}``.
    Every node error is written as ``ε_v = M_v x + k_v`` (x the free vector of one sample), so
    ``F_i = ½ Σ_v π_v ‖M_v x + k_v‖²`` and ``A = Σ π MᵀM``, ``b_i = −Σ π Mᵀk_i``,
    ``c_i = ½ Σ π ‖k_i‖²``. Returns ``(A [n,n], b [B,n], c [B])``; F is the mean over samples."""
    import numpy as np

    model = net.model
    nodes = {n.name: n for n in model.nodes}
    dims = {n: int(np.prod(nodes[n].shape)) for n in nodes}
    off, o = {}, 0
    for n in free:
        off[n] = o
        o += dims[n]
    n_free = o
    B = next(iter(clamped.values())).shape[0]
    scales = net.scales()
    incoming = {}
    for e in model.edges:
        for i, t in enumerate(e.terms):
            name = f"{e.src}->{e.dst}" if len(e.terms) == 1 else f"{e.src}->{e.dst}[{i}]"
            kinds = [c.kind for c in t.chain]
            if kinds == ["identity"]:
                W, bb = np.eye(dims[e.src]), np.zeros(dims[e.dst])
            elif kinds == ["dense"]:
                p = net.term_params(name)[0]
                W = np.asarray(p["W"])
                bb = np.asarray(p["b"]) if "b" in p else np.zeros(dims[e.dst])
            else:
                raise ValueError(kinds)
            incoming.setdefault(e.dst, []).append((e.src, W, bb, scales[name]))
    A = np.zeros((n_free, n_free))
    b = np.zeros((B, n_free))
    c = np.zeros(B)
    for v, nd in nodes.items():
        has_parents = v in incoming
        if not has_parents and nd.prior is None:
            continue
        if v not in free and v not in clamped:
            continue  # a free leaf: not part of F
        d = dims[v]
        M = np.zeros((d, n_free))
        k = np.zeros((B, d))
        if has_parents:
            pi = nd.energy.precision
            if v in free:
                M[:, off[v]:off[v] + d] += np.eye(d)
            else:
                k += np.asarray(clamped[v])
            for u, W, bb, s in incoming[v]:
                if u in free:
                    M[:, off[u]:off[u] + dims[u]] -= s * W.T
                else:
                    k -= s * np.asarray(clamped[u]) @ W
                k -= s * bb
        else:
            pi = 1.0
            m, sd = nd.prior.mean, nd.prior.std
            if v in free:
                M[:, off[v]:off[v] + d] += np.eye(d) / sd
            else:
                k += np.asarray(clamped[v]) / sd
            k -= m / sd
        A += pi * M.T @ M
        b += -pi * k @ M
        c += 0.5 * pi * np.sum(k * k, axis=1)
    return A, b, c


def opts(net, *, init_options=None, init_overrides=None, activity_scale=None, **settings):
    """``inference=`` and ``init=`` for ``make_train_step`` / ``make_eval_step`` from settings
    given by name (``steps=5``, ``init="mem"``, ...), through the public resolver."""
    import dataclasses

    import pcgraph

    c = pcgraph.resolve_config(net.plan.settings, init_nodes=init_overrides,
                               init_options=init_options, **settings)
    inference = c.inference
    if activity_scale is not None:
        inference = dataclasses.replace(inference, activity_scale=activity_scale)
    return {"inference": inference, "init": c.init}
