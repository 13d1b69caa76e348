"""The kernels: activations and the batched evaluation of term groups (one op per stacked
transform: an ``einsum`` for dense, a grouped convolution for conv), and the assembly of the
pre-activations of every node group."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._plan import Acts, StepSpec, TermGroup, slice_of

if TYPE_CHECKING:
    from ._network import Network


# ------------------------------------------------------------------------------ activations
def _identity(x):
    return x


ACTIVATIONS: dict[str, Callable] = {
    "identity": _identity,
    "linear": _identity,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "hard_tanh": jax.nn.hard_tanh,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
}


def activation(name: str) -> Callable:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


# ------------------------------------------------------------------------------ evaluation
def take(arr, idx: tuple[int, ...]):
    """``arr[idx]`` along axis 0 with a static slice when ``idx`` is contiguous."""
    sl = slice_of(idx)
    if sl is not None:
        if sl == (0, arr.shape[0]):
            return arr
        return arr[sl[0]:sl[1]]
    return arr[np.asarray(idx)]


def _apply_step(st: StepSpec, p: Mapping[str, jax.Array], x):
    """One transform on stacked inputs ``x: [E, B, *in_shape]``."""
    E, B = x.shape[0], x.shape[1]
    if st.kind == "identity":
        return x
    if st.kind == "flatten":
        return x.reshape(E, B, -1)
    if st.kind == "dense":
        W = p["W"]
        # bf16 / fp16 storage: the products accumulate in fp32 (then stored back)
        acc = jnp.float32 if x.dtype in (jnp.bfloat16, jnp.float16) else None
        if E == 1:
            y = jnp.matmul(x[0], W[0], preferred_element_type=acc)[None]
        else:
            y = jnp.einsum("ebi,eio->ebo", x, W, preferred_element_type=acc)
        if acc is not None:
            y = y.astype(x.dtype)
        if "b" in p:
            y = y + p["b"][:, None, :]
        if len(st.out_shape) != 1:
            y = y.reshape(E, B, *st.out_shape)
        return y
    if st.kind == "conv":
        W = p["W"]
        pad = [(st.padding, st.padding)] * 2
        dn = ("NCHW", "OIHW", "NCHW")
        if E == 1:
            y = jax.lax.conv_general_dilated(
                x[0], W[0], (st.stride, st.stride), pad, dimension_numbers=dn
            )[None]
        else:  # one grouped convolution over the stacked axis
            C, H, Wd = x.shape[2:]
            xr = jnp.moveaxis(x, 0, 1).reshape(B, E * C, H, Wd)
            Wr = W.reshape(E * W.shape[1], *W.shape[2:])
            y = jax.lax.conv_general_dilated(
                xr, Wr, (st.stride, st.stride), pad, dimension_numbers=dn, feature_group_count=E
            )
            y = jnp.moveaxis(y.reshape(B, E, W.shape[1], *y.shape[2:]), 1, 0)
        if "b" in p:
            y = y + p["b"][:, None, :, None, None]
        return y
    if st.kind == "conv_transpose":
        y = jax.vmap(functools.partial(_conv_transpose, st))(x, p["W"])
        if "b" in p:
            y = y + p["b"][:, None, :, None, None]
        return y
    if st.kind == "upsample":
        f = st.stride
        return jnp.repeat(jnp.repeat(x, f, axis=-2), f, axis=-1)
    if st.kind in ("maxpool", "avgpool"):
        w, s = st.kernel, st.stride
        dims, strides = (1, 1, 1, w, w), (1, 1, 1, s, s)
        if st.kind == "maxpool":
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, "VALID")
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, "VALID") / (w * w)
    raise ValueError(f"unknown transform {st.kind!r}")


def _conv_transpose(st: StepSpec, x, W):
    """The transposed convolution of ``x: [B, I, H, W]`` with ``W: [O, I, k, k]``: the adjoint
    (vector-Jacobian product) of the convolution with kernel ``W`` read as ``[I, O, k, k]``, the
    same stride and padding: a stride-dilated input, padded by ``k − 1 − p``, convolved with the
    spatially flipped kernel. Output ``(H − 1)·s − 2p + k``."""
    q = st.kernel - 1 - st.padding
    return jax.lax.conv_general_dilated(
        x, W[:, :, ::-1, ::-1], (1, 1), [(q, q), (q, q)], lhs_dilation=(st.stride, st.stride),
        dimension_numbers=("NCHW", "OIHW", "NCHW"))


def _scale(x, scales: tuple[float, ...]):
    if all(s == 1.0 for s in scales):
        return x
    if all(s == scales[0] for s in scales):
        return x * scales[0]
    s = jnp.asarray(np.asarray(scales), x.dtype).reshape((len(scales),) + (1,) * (x.ndim - 1))
    return x * s


def apply_terms(tg: TermGroup, params: tuple, x, scales: tuple[float, ...] | None = None):
    """A term group's output ``s_t · chain_t(ψ_t(x))`` for stacked sources ``x: [E, B, ...]``."""
    x = activation(tg.pre)(x)
    for st, p in zip(tg.steps, params):
        x = _apply_step(st, p, x)
    return _scale(x, tg.scales if scales is None else scales)


def split_members(params: tuple, size: int) -> tuple[tuple, ...]:
    """A term group's stacked parameters as ``size`` per-member parameter tuples (leading axis
    1). One ``jnp.split`` per array: its gradient is one concatenation, where slicing each member
    out separately would differentiate into ``size`` full-size pads (O(size²) for a deep loop)."""
    if size == 1:
        return (params,)
    parts = tuple({n: jnp.split(a, size, axis=0) for n, a in p.items()} for p in params)
    return tuple(tuple({n: q[n][e] for n in q} for q in parts) for e in range(size))


def apply_member(tg: TermGroup, member_params: tuple, e: int, x):
    """Member ``e`` of a term group, with its own parameters (see :func:`split_members`), on
    ``x: [B, ...]`` (used by the forward pass)."""
    return apply_terms(tg, member_params, x[None], (tg.scales[e],))[0]


PAD_BLOCKS = 4  # assemble: up to this many blocks are padded and summed, more are concatenated


def assemble(size: int, contribs: list[tuple[tuple[int, ...], jax.Array]]):
    """Sum contributions ``(target indices, [E, B, ...])`` into ``[size, B, ...]``.

    Disjoint contiguous contributions that tile ``[0, size)`` are concatenated (no zeros, no
    scatter); overlapping ones are added into slices (or scattered when not contiguous)."""
    # contributions to the same nodes (a residual edge's dense + identity terms) are added first:
    # a sum, not a scatter-add, which keeps a layer-sharded stack local (pcgraph._sharding)
    summed: dict[tuple[int, ...], jax.Array] = {}
    for idx, c in contribs:
        summed[idx] = summed[idx] + c if idx in summed else c
    contribs = list(summed.items())
    base: list[tuple[int, int, jax.Array]] = []
    extra = []
    used = set()
    for idx, c in contribs:
        sl = slice_of(idx)
        if sl is not None and not used.intersection(idx):
            base.append((sl[0], sl[1], c))
            used.update(idx)
        else:
            extra.append((idx, c))
    base.sort(key=lambda t: t[0])
    ref = contribs[0][1]
    tail = ref.shape[1:]
    if 0 < len(base) <= PAD_BLOCKS:
        # a few blocks: each padded to the full size and summed. A layer-sharded stack (see
        # pcgraph._sharding) then shifts by a halo exchange of one row, where a concatenation
        # would reshuffle the whole stack between devices on every inference step
        out = None
        for a, b, c in base:
            p = c if (a, b) == (0, size) else jnp.pad(c, [(a, size - b)] + [(0, 0)] * (c.ndim - 1))
            out = p if out is None else out + p
    else:
        pieces, pos = [], 0
        for a, b, c in base:
            if a > pos:
                pieces.append(jnp.zeros((a - pos, *tail), ref.dtype))
            pieces.append(c)
            pos = b
        if pos < size:
            pieces.append(jnp.zeros((size - pos, *tail), ref.dtype))
        out = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=0)
    for idx, c in extra:
        sl = slice_of(idx)
        if sl is not None:
            out = out.at[sl[0]:sl[1]].add(c)
        else:
            out = out.at[np.asarray(idx)].add(c)
    return out


def preactivations(net: Network, h: Acts, need: Sequence[bool] | None = None) -> list:
    """Summed input ``Σ_t s_t·chain_t(ψ_t(h_src))`` per node group (``None`` for groups without
    parents or not in ``need``): one batched op per term group."""
    plan = net.plan
    contribs: list[list] = [[] for _ in plan.groups]
    for k, tg in enumerate(plan.terms):
        if need is not None and not need[tg.tgt]:
            continue
        out = apply_terms(tg, net.params[k], take(h[tg.src], tg.src_idx))
        contribs[tg.tgt].append((tg.tgt_idx, out))
    return [
        assemble(g.size, contribs[gi]) if contribs[gi] else None
        for gi, g in enumerate(plan.groups)
    ]
