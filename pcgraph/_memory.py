"""Modern-Hopfield associative memories: the learned initialiser behind ``init = mem``.

Seed 004, eq. 8. For a node of size ``n`` (its shape flattened) and observations ``o`` (every
clamped node of the query, flattened and concatenated, width ``d``), one memory head retrieves

    h = softmax(δ · (o·Q + b) · Kᵀ) · V          Q: [d, e]  b: [e]  K: [p, e]  V: [p, n]

``p`` stored patterns (keys ``K``) with their values ``V``, an ``e``-dimensional query/key
embedding, inverse temperature ``δ`` (a fixed hyperparameter, not trained). It is trained by the
squared error to the relaxed (converged) activities (eq. 9, :func:`memory_loss`), and its values are
first set by least squares (:func:`fit_values_lstsq`: ``V = A⁺ h_ref``, ``A = softmax(δ(OQ+b)Kᵀ)``)
so that on the first batch the memory reproduces a reference initialisation exactly (when the
attention matrix has full row rank, e.g. ``p ≥ batch``).

**Multiple heads.** ``heads = H`` independent heads, each with its own ``Q_k, b_k, K_k, V_k``. Two
ways to combine them (``combine``):

* ``"mean"`` (default): every head produces the whole node, ``V_k: [p, n]``, and the output is the
  average ``h = (1/H) Σ_k A_k V_k``. Equivalently ``h = [A_1 … A_H]/H · [V_1; …; V_H]``: one linear
  map from ``H·p`` attention weights, so least squares reproduces the reference when
  ``H·p ≥ batch`` (generic case).
* ``"concat"``: head ``k`` produces the ``k``-th contiguous slice of the node (``n`` must be
  divisible by ``H``), ``V_k: [p, n/H]``, ``h = [A_1V_1 | … | A_HV_H]``. Least squares is solved per
  head; it reproduces the reference when ``p ≥ batch``.

With ``heads = 1`` the two are the same formula, eq. 8 exactly.

**Parameterisation.** With δ = 200 the query projection that gives useful (neither uniform nor
one-hot) attention is tiny, and a scale-free optimiser such as Adam would move it by its own size
every step. So ``Q`` and ``b`` are stored as a direction and a scale, ``Q = s·Q̂``, ``b = s·b̂``
(``Q̂ ~ N(0, 1/d)``, ``b̂ = 0``, one non-trained scale ``s`` per head, gradient stopped), and
``mem.Q``/``mem.b`` are those products: retrieval is eq. 8 exactly, only the optimiser sees
unit-scale parameters. ``s`` starts at ``1/(200·scale·√e)`` so that the logits ``δ(oQ+b)Kᵀ`` have
scale δ/200 for observations of typical size ``scale`` (``K ~ N(0, 1)``): seed 004's δ = 200 gives
unit-scale logits, a smaller δ softer attention, a larger one sharper. :func:`calibrate_query`
resets ``b̂`` and ``s`` from the first batch (same rule, ``logit_std·δ/200``). ``V = 0`` at first (an untrained, unfitted memory
initialises to zero).

Every function here is pure; a memory is an ``equinox.Module`` (a pytree of arrays), trained with
any optax optimiser like the network parameters and saved with the checkpoint.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

COMBINES = ("mean", "concat")
DELTA_REF = 200.0  # the δ whose logits get the reference scale (seed 004's best δ)


class HopfieldMemory(eqx.Module):
    """One node's memory. Arrays carry a leading head axis ``H``.

    Qhat: ``[H, d, e]``, bhat: ``[H, e]``, scale: ``[H]`` (not trained), K: ``[H, p, e]``,
    V: ``[H, p, n/H or n]``; ``Q = scale·Qhat`` and ``b = scale·bhat`` are properties.
    ``out_shape`` is the node's per-sample shape; retrieval returns ``[B, *out_shape]``."""

    Qhat: jax.Array
    bhat: jax.Array
    scale: jax.Array
    K: jax.Array
    V: jax.Array
    delta: float = eqx.field(static=True)
    combine: str = eqx.field(static=True)
    out_shape: tuple[int, ...] = eqx.field(static=True)

    @property
    def Q(self) -> jax.Array:
        """The query projection ``[H, d, e]`` of eq. 8."""
        return jax.lax.stop_gradient(self.scale)[:, None, None] * self.Qhat

    @property
    def b(self) -> jax.Array:
        """The query bias ``[H, e]`` of eq. 8."""
        return jax.lax.stop_gradient(self.scale)[:, None] * self.bhat

    @property
    def heads(self) -> int:
        return self.Qhat.shape[0]

    @property
    def patterns(self) -> int:
        return self.K.shape[1]

    @property
    def obs_size(self) -> int:
        return self.Qhat.shape[1]

    @property
    def out_size(self) -> int:
        return math.prod(self.out_shape)


def init_memory(
    key: jax.Array,
    obs_size: int,
    out_shape: int | tuple[int, ...],
    *,
    patterns: int = 24,
    heads: int = 1,
    embed: int = 128,
    delta: float = 200.0,
    combine: str = "mean",
    scale: float = 1.0,
    dtype=None,
) -> HopfieldMemory:
    """A fresh memory for a node of shape ``out_shape`` reading ``obs_size`` observation features.

    Defaults follow seed 004 (p = 24 patterns, δ = 200; its generative experiment used 16 heads of
    embedding 128 in total). ``embed`` is the per-head query/key width. ``scale`` is the typical
    size of one observation feature (1 for data in [0, 1] or standardised data)."""
    out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(int(s) for s in out_shape)
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if heads < 1 or patterns < 1 or embed < 1 or obs_size < 1:
        raise ValueError("heads, patterns, embed and obs_size must be positive")
    if delta <= 0:
        raise ValueError(f"the inverse temperature delta must be positive, got {delta}")
    n = math.prod(out_shape)
    if combine == "concat" and n % heads:
        raise ValueError(f"combine = concat needs the node size {n} divisible by heads = {heads}")
    dtype = dtype or jnp.result_type(float)
    kq, kk = jax.random.split(key)
    Qhat = jax.random.normal(kq, (heads, obs_size, embed), dtype) / math.sqrt(obs_size)
    K = jax.random.normal(kk, (heads, patterns, embed), dtype)
    s = 1.0 / (DELTA_REF * max(scale, 1e-12) * math.sqrt(embed))
    width = n if combine == "mean" else n // heads
    return HopfieldMemory(
        Qhat=Qhat,
        bhat=jnp.zeros((heads, embed), dtype),
        scale=jnp.full((heads,), s, dtype),
        K=K,
        V=jnp.zeros((heads, patterns, width), dtype),
        delta=float(delta),
        combine=combine,
        out_shape=out_shape,
    )


def _flat_obs(mem: HopfieldMemory, o: jax.Array) -> jax.Array:
    o = jnp.reshape(o, (o.shape[0], -1))
    if o.shape[1] != mem.obs_size:
        raise ValueError(f"memory expects {mem.obs_size} observation features, got {o.shape[1]}")
    return o


def attention(mem: HopfieldMemory, o: jax.Array) -> jax.Array:
    """``A_k = softmax(δ (o Q_k + b_k) K_kᵀ)`` for every head: ``[H, B, p]``."""
    o = _flat_obs(mem, o)
    q = jnp.einsum("bd,hde->hbe", o, mem.Q) + mem.b[:, None, :]
    logits = mem.delta * jnp.einsum("hbe,hpe->hbp", q, mem.K)
    return jax.nn.softmax(logits, axis=-1)


def retrieve(mem: HopfieldMemory, o: jax.Array) -> jax.Array:
    """Eq. 8: the memory's initialisation for observations ``o`` (``[B, ...]``): ``[B, *out_shape]``."""
    A = attention(mem, o)
    per_head = jnp.einsum("hbp,hpn->hbn", A, mem.V)
    if mem.combine == "mean":
        flat = jnp.mean(per_head, axis=0)
    else:
        flat = jnp.moveaxis(per_head, 0, 1).reshape(per_head.shape[1], -1)
    return flat.reshape((flat.shape[0],) + mem.out_shape)


def memory_loss(mem: HopfieldMemory, o: jax.Array, h_target: jax.Array) -> jax.Array:
    """Eq. 9 for one node: Σ over features, mean over the batch, of ``(retrieve(o) − h_target)²``.

    (Seed 004 sums over the batch too; the mean keeps the step size independent of the batch size,
    the same convention as the energy.) ``h_target`` is treated as a constant."""
    h = retrieve(mem, o)
    r = h - jax.lax.stop_gradient(h_target).reshape(h.shape)
    return jnp.sum(r.reshape(r.shape[0], -1) ** 2) / r.shape[0]


def _solve(A: jax.Array, Y: jax.Array, ridge: float, rcond) -> jax.Array:
    """``A⁺ Y`` (ridge = 0) or ``(AᵀA + ridge·I)⁻¹ AᵀY``."""
    if ridge > 0:
        G = A.T @ A + ridge * jnp.eye(A.shape[1], dtype=A.dtype)
        return jnp.linalg.solve(G, A.T @ Y)
    return jnp.linalg.pinv(A, rtol=rcond) @ Y


def fit_values_lstsq(mem: HopfieldMemory, o: jax.Array, h_ref: jax.Array, rcond: float | None = None,
                     ridge: float = 0.0) -> HopfieldMemory:
    """Set ``V = A⁺ h_ref`` (least squares, via the pseudo-inverse) so that ``retrieve(mem, o)``
    reproduces ``h_ref`` as closely as the attention matrix allows — exactly when ``A`` has full row
    rank (``p ≥ B`` per head for ``concat``, ``H·p ≥ B`` for ``mean``). Q, b, K are unchanged.

    An exact fit of one batch (``p ≥ B``) tends to give large values that generalise badly to the
    next batch; ``ridge > 0`` solves ``(AᵀA + ridge·I) V = Aᵀ h_ref`` instead (ridge regression,
    bounded ``V``). Returns the new memory (pure)."""
    A = attention(mem, o)  # [H, B, p]
    H, B, p = A.shape
    ref = jnp.reshape(h_ref, (B, -1)).astype(A.dtype)
    if ref.shape[1] != mem.out_size:
        raise ValueError(f"reference has {ref.shape[1]} features per sample, memory has {mem.out_size}")
    if mem.combine == "mean":
        big = jnp.moveaxis(A, 0, 1).reshape(B, H * p) / H  # [B, H·p]
        V = _solve(big, ref, ridge, rcond).reshape(H, p, -1)
    else:
        parts = ref.reshape(B, H, -1).transpose(1, 0, 2)  # [H, B, n/H]
        V = jax.vmap(lambda a, y: _solve(a, y, ridge, rcond))(A, parts)
    return eqx.tree_at(lambda m: m.V, mem, V.astype(mem.V.dtype))


def calibrate_query(mem: HopfieldMemory, o: jax.Array, logit_std: float = 2.0) -> HopfieldMemory:
    """Data-dependent initialisation of the query (before :func:`fit_values_lstsq` on the first
    batch): set ``b = −mean_batch(o·Q)`` per head and rescale ``Q, b`` so that the logits
    ``δ(oQ+b)Kᵀ`` have standard deviation ``logit_std · δ / 200`` over the batch (so δ = 200, seed
    004's value, gives ``logit_std``; a smaller δ gives softer attention, a larger one sharper). Raw observations share a
    large common component (pixel means), which makes every row of ``A`` nearly the same and ``A``
    ill-conditioned; centring and scaling keeps the attention diverse, so the least-squares fit is
    accurate in float32 (at batch 200, p = 256: max error ~1e-5 instead of ~1). The formula (eq. 8)
    is unchanged: only the values of ``Q`` and ``b`` (their scale and ``b̂``) are chosen."""
    o = _flat_obs(mem, o)
    q = jnp.einsum("bd,hde->hbe", o, mem.Qhat)  # in units of the scale
    mu = jnp.mean(q, axis=1)  # [H, e]
    logits = mem.delta * jnp.einsum("hbe,hpe->hbp", q - mu[:, None, :], mem.K)
    sd = jnp.std(logits, axis=(1, 2))  # per head, for scale 1
    target = logit_std * mem.delta / DELTA_REF
    s = jnp.where(sd > 0, target / jnp.maximum(sd, 1e-30), mem.scale)
    return eqx.tree_at(lambda m: (m.bhat, m.scale), mem, (-mu, s.astype(mem.scale.dtype)))


def memory_smm() -> int:
    """Sequential matrix multiplications of one retrieval: ``(oQ)`` then ``·Kᵀ`` then ``·V``; with
    ``QKᵀ`` and ``bKᵀ`` folded (they change only at weight updates) it is 2. We report 2."""
    return 2
