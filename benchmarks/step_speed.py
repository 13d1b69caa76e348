"""Milliseconds per training step: pcgraph against a minimal hand-written JAX PC step.

Seed 004's classifier: 784 → 512 ×4 → 10 (GELU hidden nodes, categorical output), batch 200,
forward initialisation, T plain-SGD inference steps (activity lr 0.1), AdamW on the weights.

Measured in one run, interleaved: (1) pcgraph's PC step (default ``stack="auto"``, which on the
CPU leaves the three 512→512 layers unstacked; and ``stack=True``, every group stacked), (2) the same PC step hand-written in jnp (forward init + T SGD steps in one
``lax.scan`` + weight update, one jit), (3) pcgraph's BP step; ratio (1)/(2). Each function is
warmed up, timed with ``block_until_ready`` and reported as the median of the repeats.

    python benchmarks/step_speed.py [--steps 5 20] [--repeats 30] [--batch 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

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

SIZES = [784, 512, 512, 512, 512, 10]
ACT_LR = 0.1
W_LR = 1e-3


def seed004_model() -> ModelIR:
    names = ["x", "h1", "h2", "h3", "h4", "y"]
    nodes = [NodeIR("x", (784,))]
    nodes += [NodeIR(n, (512,), act="gelu") for n in names[1:5]]
    nodes += [NodeIR("y", (10,), energy=EnergyIR("categorical"))]
    dense = (TermIR((TransformIR("dense"),)),)
    edges = [EdgeIR(u, v, dense) for u, v in zip(names, names[1:])]
    return ModelIR("mlp", tuple(nodes), tuple(edges),
                   queries=(QueryIR("train", ("x", "y")), QueryIR("test", ("x",), ("y",))))


def hand_written_step(T: int, B: int):
    """A minimal PC step of the same network in plain jnp (one jit)."""
    opt = optax.adamw(W_LR)

    def F(free, params, x, y):
        acts = [x, *free]
        e = 0.0
        for l in range(4):
            W, b = params[l]
            mu = jax.nn.gelu(acts[l] @ W + b)
            e = e + 0.5 * jnp.sum((acts[l + 1] - mu) ** 2)
        W, b = params[4]
        e = e - jnp.sum(y * jax.nn.log_softmax(acts[4] @ W + b, axis=-1))
        return e / x.shape[0]

    @jax.jit
    def step(params, opt_state, x, y):
        h, free = x, []
        for l in range(4):  # forward initialisation
            W, b = params[l]
            h = jax.nn.gelu(h @ W + b)
            free.append(h)
        free = tuple(free)

        def body(free, _):
            g = jax.grad(F)(free, params, x, y)
            return tuple(a - ACT_LR * x.shape[0] * ga for a, ga in zip(free, g)), None

        free, _ = jax.lax.scan(body, free, None, length=T)
        free = jax.lax.stop_gradient(free)
        val, g = jax.value_and_grad(F, argnums=1)(free, params, x, y)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, val

    return step, opt


def hand_params(net):
    names = ["x->h1", "h1->h2", "h2->h3", "h3->h4", "h4->y"]
    return [tuple(net.term_params(n)[0][k] for k in ("W", "b")) for n in names]


def _time(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    B = args.batch
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, B))
    y1h = jax.nn.one_hot(y, 10, dtype=jnp.float32)
    model = seed004_model()
    results = {"device": str(jax.devices()[0]), "batch": B, "sizes": SIZES, "steps": {}}
    for T in args.steps:
        runners = {}
        for label, stack in (("pcgraph", "auto"), ("pcgraph_stacked", True)):
            net = build(model, seed=0, stack=stack)
            st = make_train_step(net, "train", inference=GradientDescent(T, optax.sgd(ACT_LR)),
                                 init=Initialisation("forward"),
                                 weight_optimizer=optax.adamw(W_LR))
            state = [net, st.init(net)]

            def run(st=st, state=state):
                n, s, m = st(state[0], state[1], {"x": x, "y": y1h})
                jax.block_until_ready((n, m))

            runners[label] = run
        net = build(model, seed=0)
        hstep, hopt = hand_written_step(T, B)
        params = hand_params(net)
        hstate = [params, hopt.init(params)]

        def run_hand(hstate=hstate):
            p, s, v = hstep(hstate[0], hstate[1], x, y1h)
            jax.block_until_ready((p, v))

        runners["hand"] = run_hand
        bp = make_train_step(net, "train", method="bp", weight_optimizer=optax.adamw(W_LR))
        bstate = [net, bp.init(net)]

        def run_bp(bstate=bstate):
            n, s, m = bp(bstate[0], bstate[1], {"x": x, "y": y1h})
            jax.block_until_ready((n, m))

        runners["bp"] = run_bp
        for fn in runners.values():  # warm up (compile)
            fn()
            fn()
        times = {k: [] for k in runners}
        for _ in range(args.repeats):  # interleaved, so load changes hit everyone alike
            for k, fn in runners.items():
                times[k] += _time(fn, 1)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        med["ratio_pcgraph_over_hand"] = med["pcgraph"] / med["hand"]
        med["ratio_stacked_over_hand"] = med["pcgraph_stacked"] / med["hand"]
        results["steps"][T] = med
        if not args.json:
            print(f"T={T:3d}  pcgraph {med['pcgraph']:8.2f} ms  "
                  f"(all stacked {med['pcgraph_stacked']:8.2f} ms)  hand-written "
                  f"{med['hand']:8.2f} ms  BP {med['bp']:8.2f} ms  "
                  f"ratio pcgraph/hand {med['ratio_pcgraph_over_hand']:.3f} "
                  f"(all stacked {med['ratio_stacked_over_hand']:.3f})", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
