"""The transposed convolution and upsampling transforms: shape rules (validator and engine agree),
the adjoint identity against JAX's own convolution, stacked members, and the energy."""

import _build as b
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcgraph import PcgError, build, energy, format_model, load, ShapeError
from pcgraph._shapes import resolve_chain


def _img(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


@pytest.mark.parametrize("hw,k,s,p,out", [(7, 4, 2, 1, 14), (14, 4, 2, 1, 28), (5, 3, 1, 1, 5),
                                         (4, 3, 2, 0, 9), (3, 5, 3, 2, 7)])
def test_shape_rule(hw, k, s, p, out):
    t = b.tr("conv_transpose", kernel=k, stride=s, padding=p)
    (step,) = resolve_chain((t,), (3, hw, hw), (2, out, out))
    assert step.out_shape == (2, out, out)


def test_upsample_shape_and_values(x64):
    (step,) = resolve_chain((b.tr("upsample", 2),), (3, 4, 5), (3, 8, 10))
    assert step.out_shape == (3, 8, 10)
    m = b.model("up", [b.node("a", (2, 3, 3)), b.node("c", (2, 6, 6))],
                [b.edge("a", "c", b.term(b.tr("upsample", 2), bias=False))],
                [b.query("q", ("a", "c"))])
    net = build(m)
    x = _img(0, (1, 2, 3, 3))
    h = net.pack({"a": x, "c": jnp.zeros((1, 2, 6, 6))})
    # F = ½‖0 − up(x)‖² = ½·4·‖x‖² (each pixel copied to a 2×2 block)
    assert abs(float(energy(net, h)) - 2.0 * float(jnp.sum(x**2))) < 1e-10


@pytest.mark.parametrize("k,s,p", [(4, 2, 1), (3, 1, 1), (3, 2, 0), (5, 3, 2), (2, 2, 0), (3, 2, 1),
                                   (4, 3, 0)])
def test_conv_transpose_is_the_adjoint_of_conv(x64, k, s, p):
    """⟨convT(x; W), u⟩ = ⟨x, conv(u; Wᵀ)⟩, with JAX's convolution (stride s, padding p) and
    W [O, I, k, k] read as the conv kernel [I, O, k, k]."""
    H = 5
    Ho = (H - 1) * s - 2 * p + k
    m = b.model("ct", [b.node("a", (3, H, H)), b.node("c", (2, Ho, Ho))],
                [b.edge("a", "c", b.term(b.tr("conv_transpose", kernel=k, stride=s, padding=p),
                                         bias=False))],
                [b.query("q", ("a", "c"))])
    net = build(m, seed=2)
    W = net.term_params("a->c")[0]["W"]
    assert W.shape == (2, 3, k, k)
    x, u = _img(1, (2, 3, H, H)), _img(2, (2, 2, Ho, Ho))
    # F = ½‖c − convT(a)‖² with c = 0: read convT(a) off the energy's gradient in c
    h = net.pack({"a": x, "c": jnp.zeros((2, 2, Ho, Ho))})
    g = jax.grad(lambda hh: energy(net, hh))(h)
    y = -net.get(g, "c") * 2  # ∂F/∂c = (c − μ)/B with B = 2
    conv = jax.lax.conv_general_dilated(u, jnp.transpose(W, (1, 0, 2, 3)), (s, s),
                                        [(p, p), (p, p)], dimension_numbers=("NCHW", "OIHW", "NCHW"))
    assert conv.shape == x.shape
    assert abs(float(jnp.sum(y * u)) - float(jnp.sum(x * conv))) < 1e-9


def test_stacked_members_equal_separate_ones(x64):
    """Two conv_transpose terms of the same signature are stacked (one vmapped op) and give the
    same energy as the per-layer layout."""
    ct = b.term(b.tr("conv_transpose", kernel=4, stride=2, padding=1))
    m = b.model("st", [b.node(n, (2, 4, 4)) for n in ("a1", "a2")]
                + [b.node(n, (3, 8, 8)) for n in ("c1", "c2")],
                [b.edge("a1", "c1", ct), b.edge("a2", "c2", ct)], [b.query("q", ("c1", "c2"))])
    stacked, single = build(m, stack=True), build(m, stack=False)
    assert len(stacked.plan.terms) == 1 and len(single.plan.terms) == 2
    vals = {n: _img(i, (2, *stacked.node_shape(n))) for i, n in enumerate(("a1", "a2", "c1", "c2"))}
    e1 = energy(stacked, stacked.pack(vals))
    e2 = energy(single, single.pack(vals))
    assert abs(float(e1) - float(e2)) < 1e-10


SRC = """model m {
  node z: [8]
  node f: [4, 7, 7]
  node img: [1, 28, 28]
  z -> f : dense
  f -> img : conv_transpose(kernel = 4, stride = 2, padding = 1) |> upsample(2)
  query q { clamp img }
}
"""


def test_language_and_errors():
    m = load(SRC)
    assert [t.kind for t in m.edges[1].terms[0].chain] == ["conv_transpose", "upsample"]
    assert load(format_model(m)) == m
    with pytest.raises(PcgError) as err:
        load(SRC.replace("upsample(2)", "upsample(3)"))
    assert "edge produces shape [1, 42, 42] but the target node has shape [1, 28, 28]" in str(
        err.value)
    with pytest.raises(PcgError) as err:
        load(SRC.replace("padding = 1)", "padding = 4)"))
    assert "conv_transpose: padding must be at most kernel - 1 = 3, got 4" in str(err.value)
    with pytest.raises(ShapeError, match="conv_transpose needs an image input"):
        resolve_chain((b.tr("conv_transpose"),), (8,), (1, 3, 3))
