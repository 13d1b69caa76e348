"""Hand-written μPC training steps of ``models/resnet_mupc.pcg`` in plain JAX (the references of
``mupc_speed.py`` and ``device_check.py``): one per-layer step (a Python loop over layers, one
small matmul each) and one stacked-layer step (the residual layers' weights as one
``[H − 2, N, N]`` array: one batched matmul per inference step, a ``lax.scan`` over layers for the
forward initialisation).

The step: forward initialisation, ``T`` plain-GD activity steps (lr ``act_lr`` on the batch-mean
energy) in one ``lax.scan``, ``∂F/∂θ`` at the relaxed activities, one Adam update. Imports only
jax, optax and numpy (it runs on the bare GPU image).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

ACT_LR, W_LR = 0.5, 0.05


def _scales(depth: int, width: int, inputs: int):
    return 1 / math.sqrt(inputs), 1 / math.sqrt(width * depth), 1 / width


def _step(energy, forward, opt, T: int, act_lr: float):
    """The jitted step around an energy ``(params, activities, x, y)`` and a forward pass."""

    @jax.jit
    def step(params, opt_state, x, y):
        zs = forward(params, x)
        F0 = energy(params, zs, x, y)
        gz = jax.grad(energy, argnums=1)

        def body(zs, _):
            g = gz(params, zs, x, y)
            return jax.tree_util.tree_map(lambda z, gi: z - act_lr * gi, zs, g), None

        zs, _ = jax.lax.scan(body, zs, None, length=T)
        zs = jax.lax.stop_gradient(zs)
        F1, grads = jax.value_and_grad(energy)(params, zs, x, y)
        upd, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, F0, F1

    return step


def hand_written_step(depth: int, width: int, T: int, inputs: int = 784, *,
                      act_lr: float = ACT_LR, w_lr: float = W_LR):
    """The per-layer step; params = ``(W_in, [W_hidden...], W_out)``. Returns ``(step, opt)``;
    ``step(params, opt_state, x, y) -> (params, opt_state, F0, F1)``."""
    a_in, a_hid, a_out = _scales(depth, width, inputs)
    opt = optax.adam(w_lr)
    relu = jax.nn.relu

    def preds(params, zs, x):
        W_in, Ws, W_out = params
        out = [a_in * (x @ W_in)]
        for W, z in zip(Ws, zs[:-1]):
            out.append(z + a_hid * (relu(z) @ W))
        return out, a_out * (relu(zs[-1]) @ W_out)

    def energy(params, zs, x, y):
        mus, yhat = preds(params, zs, x)
        e = sum(jnp.sum((z - m) ** 2) for z, m in zip(zs, mus))
        return 0.5 * (e + jnp.sum((y - yhat) ** 2)) / x.shape[0]

    def forward(params, x):
        W_in, Ws, _ = params
        zs = [a_in * (x @ W_in)]
        for W in Ws:
            zs.append(zs[-1] + a_hid * (relu(zs[-1]) @ W))
        return zs

    return _step(energy, forward, opt, T, act_lr), opt


def stacked_step(depth: int, width: int, T: int, inputs: int = 784, *,
                 act_lr: float = ACT_LR, w_lr: float = W_LR):
    """The stacked-layer step; params = ``(W_in, W_hidden [H − 2, N, N], W_out)``; activities
    ``[H − 1, B, N]``. Same signature as :func:`hand_written_step`."""
    a_in, a_hid, a_out = _scales(depth, width, inputs)
    opt = optax.adam(w_lr)
    relu = jax.nn.relu

    def energy(params, Z, x, y):
        W_in, Ws, W_out = params
        mu_hid = Z[:-1] + a_hid * jnp.einsum("lbn,lnm->lbm", relu(Z[:-1]), Ws)
        e = jnp.sum((Z[0] - a_in * (x @ W_in)) ** 2) + jnp.sum((Z[1:] - mu_hid) ** 2)
        yhat = a_out * (relu(Z[-1]) @ W_out)
        return 0.5 * (e + jnp.sum((y - yhat) ** 2)) / x.shape[0]

    def forward(params, x):
        W_in, Ws, _ = params
        z1 = a_in * (x @ W_in)

        def layer(z, W):
            z = z + a_hid * (relu(z) @ W)
            return z, z

        _, rest = jax.lax.scan(layer, z1, Ws)
        return jnp.concatenate([z1[None], rest], axis=0)

    return _step(energy, forward, opt, T, act_lr), opt


def hand_params(net, depth: int, stacked: bool = False):
    """The weights of a pcgraph ``resnet_mupc`` network in the hand-written steps' layout."""
    W = lambda n: net.term_params(n)[0]["W"]  # noqa: E731
    hidden = [W(f"h{i - 1}->h{i}[0]") for i in range(2, depth)]
    if stacked:
        hidden = jnp.stack(hidden)
    return W("x->h1"), hidden, W(f"h{depth - 1}->y")


def weight_bytes(depth: int, width: int, inputs: int = 784, classes: int = 10,
                 itemsize: int = 4) -> int:
    """Bytes of every weight of the network (what one inference step reads at least once)."""
    return itemsize * (inputs * width + (depth - 2) * width * width + width * classes)
