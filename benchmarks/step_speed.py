"""Milliseconds per training step: pcgraph against hand-written JAX PC steps (paired rounds).

Networks (784 → W ×4 → 10, batch 200, forward initialisation, T plain-SGD inference steps,
activity lr 0.1, Adam 1e-3 on the weights):

* ``tanh``: tanh hidden nodes, categorical output (the issue-14 table's MLP);
* ``tanh_gaussian``: seed 004's network — tanh hidden nodes, a Gaussian (identity) output;
* ``gelu``: GELU hidden nodes, categorical output, AdamW (this script's earlier default).

Measured in one process, interleaved: pcgraph's PC step (default ``stack="auto"``, and
``stack=True``), the same step hand-written in jnp with the inference loop in a ``lax.scan``
(the reference, ratio 1.00) and with the loop unrolled, and pcgraph's BP step. Every round calls
each function once (rotated order); the figures are the medians over rounds of the per-round ratios
to the hand-written ``lax.scan`` and unrolled steps (paired ratios are stable on a loaded machine where single
medians swing by ±15 %). Records are appended to ``benchmarks/results/step_speed.jsonl``.

    python benchmarks/step_speed.py [--net tanh tanh_gaussian] [--steps 5 20] [--rounds 40]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from _paired import paired_rounds, summary  # noqa: E402
from pcgraph import (  # noqa: E402
    EdgeIR,
    EnergyIR,
    ModelIR,
    NodeIR,
    QueryIR,
    TermIR,
    TransformIR,
)
from pcgraph import GradientDescent, Initialisation, build, make_train_step  # noqa: E402

ACT_LR = 0.1
W_LR = 1e-3
#: name -> (hidden activation, output energy, weight optimiser)
NETS = {"tanh": ("tanh", "categorical", "adam"),
        "tanh_gaussian": ("tanh", "gaussian", "adam"),
        "gelu": ("gelu", "categorical", "adamw")}
_ACT = {"tanh": jnp.tanh, "gelu": jax.nn.gelu}


def mlp_model(width: int = 512, act: str = "gelu", out: str = "categorical", inputs: int = 784,
              hidden: int = 4, classes: int = 10) -> ModelIR:
    names = ["x", *[f"h{i}" for i in range(1, hidden + 1)], "y"]
    nodes = [NodeIR("x", (inputs,))]
    nodes += [NodeIR(n, (width,), act=act) for n in names[1:-1]]
    nodes += [NodeIR("y", (classes,), energy=EnergyIR(out))]
    dense = (TermIR((TransformIR("dense"),)),)
    edges = [EdgeIR(u, v, dense) for u, v in zip(names, names[1:])]
    return ModelIR("mlp", tuple(nodes), tuple(edges),
                   queries=(QueryIR("train", ("x", "y")), QueryIR("test", ("x",), ("y",))))


def seed004_model(width: int = 512) -> ModelIR:
    return mlp_model(width, "gelu", "categorical")


def _wopt(name: str):
    return optax.adamw(W_LR) if name == "adamw" else optax.adam(W_LR)


def hand_written_step(T: int, B: int, *, act: str = "gelu", out: str = "categorical",
                      opt: str = "adamw", unroll: bool = False):
    """A minimal PC step of the same network in plain jnp (one jit); ``unroll``: the inference
    loop as straight-line code instead of a ``lax.scan``."""
    wopt, phi = _wopt(opt), _ACT[act]

    def F(free, params, x, y):
        acts = [x, *free]
        e = 0.0
        for l in range(len(params) - 1):
            W, b = params[l]
            e = e + 0.5 * jnp.sum((acts[l + 1] - phi(acts[l] @ W + b)) ** 2)
        W, b = params[-1]
        if out == "categorical":
            e = e - jnp.sum(y * jax.nn.log_softmax(acts[-1] @ W + b, axis=-1))
        else:
            e = e + 0.5 * jnp.sum((y - (acts[-1] @ W + b)) ** 2)
        return e / x.shape[0]

    @jax.jit
    def step(params, opt_state, x, y):
        h, free = x, []
        for W, b in params[:-1]:  # forward initialisation
            h = phi(h @ W + b)
            free.append(h)
        free = tuple(free)

        def body(free, _):
            g = jax.grad(F)(free, params, x, y)
            return tuple(a - ACT_LR * x.shape[0] * ga for a, ga in zip(free, g)), None

        if unroll:
            for _ in range(T):
                free, _ = body(free, None)
        else:
            free, _ = jax.lax.scan(body, free, None, length=T)
        free = jax.lax.stop_gradient(free)
        val, g = jax.value_and_grad(F, argnums=1)(free, params, x, y)
        upd, opt_state = wopt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, val

    return step, wopt


def hand_params(net, hidden: int = 4):
    names = ["x->h1", *[f"h{i}->h{i + 1}" for i in range(1, hidden)], f"h{hidden}->y"]
    return [tuple(net.term_params(n)[0][k] for k in ("W", "b")) for n in names]


def runners(net_name: str, T: int, B: int, width: int = 512, *, bp: bool = True,
            stacked: bool = True, hand: bool = True, precision: str = "fp32"):
    """``{label: () -> device value}`` for one network and T: pcgraph (stack auto / True), the
    hand-written scan and unrolled steps, pcgraph's BP step; and the inputs' energies agree."""
    act, out, opt = NETS[net_name]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, 784)), jnp.float32)
    y1h = jax.nn.one_hot(jnp.asarray(rng.integers(0, 10, B)), 10, dtype=jnp.float32)
    model = mlp_model(width, act, out)
    fns = {}
    for label, stack in (("pcgraph", "auto"), ("pcgraph stack=True", True))[:2 if stacked else 1]:
        net = build(model, seed=0, stack=stack)
        st = make_train_step(net, "train", inference=GradientDescent(T, optax.sgd(ACT_LR)),
                             init=Initialisation("forward"), weight_optimizer=_wopt(opt),
                             precision=precision)
        s0 = st.init(net)
        fns[label] = (lambda st=st, net=net, s0=s0: st(net, s0, {"x": x, "y": y1h})[2]
                      ["energy_end"])
    net = build(model, seed=0)
    params = hand_params(net)
    for label, unroll in (("hand-written lax.scan", False),
                          ("hand-written unrolled", True))[:2 if hand else 0]:
        hstep, hopt = hand_written_step(T, B, act=act, out=out, opt=opt, unroll=unroll)
        hs0 = hopt.init(params)
        fns[label] = lambda hstep=hstep, hs0=hs0: hstep(params, hs0, x, y1h)[2]
    if bp:
        bstep = make_train_step(net, "train", method="bp", weight_optimizer=_wopt(opt))
        b0 = bstep.init(net)
        fns["pcgraph BP"] = lambda: bstep(net, b0, {"x": x, "y": y1h})[2]["loss"]
    if precision == "fp32" and hand:  # the same computation
        np.testing.assert_allclose(float(fns["pcgraph"]()), float(fns["hand-written lax.scan"]()),
                                   rtol=2e-3)
    return fns


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", nargs="+", default=["tanh", "tanh_gaussian"], choices=list(NETS))
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "step_speed.jsonl"))
    args = ap.parse_args(argv)
    dev = jax.devices()[0]
    print(f"# step_speed on {dev.platform} ({getattr(dev, 'device_kind', '')}), "
          f"{os.cpu_count()} CPU cores, jax {jax.__version__}; batch {args.batch}, "
          f"{args.rounds} paired rounds")
    print("| network | T | implementation | ms (median) | ratio to hand-written scan | ratio to "
          "hand-written unrolled |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    results = []
    for name in args.net:
        for T in args.steps:
            fns = runners(name, T, args.batch, args.width)
            for fn in fns.values():  # warm up (compile)
                jax.block_until_ready(fn())
            times = paired_rounds(fns, args.rounds)
            summ = summary(times, "hand-written lax.scan")
            unrolled = summary(times, "hand-written unrolled")
            for k, s in summ.items():
                s["ratio_to_unrolled_median"] = unrolled[k]["ratio_median"]
                print(f"| {name} | {T} | {k} | {s['ms_median']:.2f} | {s['ratio_median']:.3f} | "
                      f"{s['ratio_to_unrolled_median']:.3f} |", flush=True)
            rec = {"benchmark": "step_speed", "net": name, "T": T, "batch": args.batch,
                   "width": args.width, "device": str(dev), "jax": jax.__version__,
                   "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime()),
                   "results": summ, "seconds": times}
            results.append(rec)
            if args.out:
                os.makedirs(os.path.dirname(args.out), exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    return results


if __name__ == "__main__":
    main()
