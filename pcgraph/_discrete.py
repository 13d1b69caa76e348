"""Reading a class node by enumeration: the answer of a query whose read node is a one-hot class.

A label-generative model (``label -> h -> img``, a style latent ``z -> h`` beside it) asked
``classify { clamp img; read label }`` should answer the class ``k`` of greatest ``p(img, k)``.
Relaxing the free label as a real vector does not answer that: under its Gaussian prior the label
is a continuous latent like ``z``, the MAP of the pair splits the explanation of the image between
them, and the argmax of the relaxed vector is not the class (docs/results.md, "Generation and
classification by one model": at or near chance). The question is discrete, so
:func:`relax_classes` answers it by enumeration:

    for each class k:   clamp node = e_k beside the query's clamps, relax the other free nodes,
                        F_k(x) = the relaxed energy of example x   (per example, not the batch mean)
    answer:             argmin_k F_k(x)

``F_k`` is −log p(x, k, ẑ_k) up to a constant: the MAP (Laplace) approximation of −log p(x, k),
with the node's prior included (a symmetric prior such as ``gaussian(m, s)`` gives every one-hot
the same prior energy, so it is a uniform class prior).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from ._config import Inference, resolve_config
from ._custom_types import Batch
from ._energy import energy
from ._infer import observed_masks, relax
from ._network import Network
from ._plan import Acts
from ._query import QueryPlan, compile_query


class ClassResult(NamedTuple):
    """What :func:`relax_classes` returns (a pytree of device arrays)."""

    h: Acts  # the relaxed activities with the winning class clamped, per example
    energies: jax.Array  # [B, K]: the relaxed energy of each example with class k clamped
    classes: jax.Array  # [B]: argmin_k energies (int)


def example_energies(net: Network, h: Acts, query: QueryPlan, observed=None) -> jax.Array:
    """``[B]``: the energy F of each example on its own (``energy`` is their mean)."""
    obs = observed if observed is not None else tuple(None for _ in h)

    def one(hb, ob):
        return energy(net, tuple(a[:, None] for a in hb),
                      query, None if observed is None else
                      tuple(None if o is None else o[:, None] for o in ob))

    return jax.vmap(one, in_axes=(1, tuple(None if o is None else 1 for o in obs)))(h, obs)


def _class_query(net: Network, query, node: str) -> QueryPlan:
    q = query if isinstance(query, QueryPlan) else compile_query(net, query)
    if node not in net.plan.loc:
        raise KeyError(f"relax_classes names unknown node {node!r}; nodes: "
                       + ", ".join(net.plan.node_names))
    if node in q.clamp or node in dict(q.partial):
        raise ValueError(f"query {q.name!r} clamps {node!r}: nothing to enumerate")
    shape = net.node_shape(node)
    if len(shape) != 1:
        raise ValueError(f"node {node!r} has shape {tuple(shape)}; enumeration needs a vector "
                         "node (one one-hot class per element)")
    return compile_query(net, {"name": f"{q.name}[{node}]", "clamp": (*q.clamp, node),
                               "read": q.read, "init": dict(q.init), "partial": dict(q.partial)})


def relax_classes(net: Network, query, data: Batch, node: str,
                  inference: Inference | None = None, *, init=None, key=None) -> ClassResult:
    """Answer ``query`` (which leaves the vector node ``node`` free) by enumerating the one-hot
    values of ``node``: each class is clamped in turn with ``data``, the other free nodes are
    relaxed (``inference``, ``init``: default the model's), and each example takes the class of
    least relaxed energy. ``result.classes`` is the answer; ``result.h`` the activities of the
    winning relaxation (read ``node`` from it: the one-hot of the class). Jitted per query."""
    qk = _class_query(net, query, node)
    if inference is None:
        inference = resolve_config(net.plan.settings).inference
    return _relax_classes(net, qk, dict(data), node, inference, init, key)


@eqx.filter_jit
def _relax_classes(net, qk, data, node, inference, init, key):
    K = net.node_shape(node)[0]
    B = len(next(iter(data.values())))
    hs, es = [], []
    for k in range(K):
        dk = {**data, node: jnp.full((B,), k, jnp.int32)}
        res = relax(net, qk, dk, inference, init=init, key=key)
        hs.append(res.h)
        es.append(example_energies(net, res.h, qk, observed_masks(net, qk, dk, res.h[0].dtype)))
    energies = jnp.stack(es, axis=1)  # [B, K]
    classes = jnp.argmin(energies, axis=1)
    pick = jax.nn.one_hot(classes, K, dtype=hs[0][0].dtype)  # [B, K]

    def select(*groups):  # each [G, B, ...] for one class -> the winner's, per example
        stacked = jnp.stack(groups)  # [K, G, B, ...]
        w = pick.T.reshape((K, 1, B) + (1,) * (stacked.ndim - 3))
        return jnp.sum(stacked * w, axis=0)

    h = tuple(select(*[hk[g] for hk in hs]) for g in range(len(hs[0])))
    return ClassResult(h, energies, classes)
