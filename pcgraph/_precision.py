"""Learned precisions: their own optimiser beside the weights'.

A learned precision (``energy = gaussian(precision = learned)``) is a parameter of the network
(``Network.precisions``, log-precisions) and is trained with the weights by the same optimiser.
Its optimum is often far from the start (log π ≈ 7 for a pixel with noise sd 0.03) while Adam moves
a parameter by about its learning rate per step, so at a weight learning rate of 1e-3 it needs
thousands of steps. :func:`precision_optimizer` gives the precisions their own optax
transformation: ``fit(net, data, weight_optimizer=precision_optimizer(optax.adam(1e-3),
optax.adam(0.05)))``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import optax


def _labels(tree):
    lab = jax.tree_util.tree_map(lambda _: "weights", tree)
    if not getattr(tree, "precisions", ()):
        return lab
    return eqx.tree_at(lambda n: n.precisions, lab,
                       replace_fn=lambda p: jax.tree_util.tree_map(lambda _: "precisions", p))


def precision_optimizer(weights: optax.GradientTransformation,
                        precisions: optax.GradientTransformation) -> optax.GradientTransformation:
    """One optax transformation for a ``Network``: ``precisions`` updates the learned
    log-precisions, ``weights`` everything else."""
    return optax.multi_transform({"weights": weights, "precisions": precisions}, _labels)
