"""One μPC training iteration: pcgraph against a plain per-layer JAX step, same process (issue 6).

The step: forward initialisation of the residual network of ``models/resnet_mupc.pcg`` (μPC
scalings), ``T`` plain-GD activity steps (lr 0.5 on the batch-mean energy) inside one
``lax.scan``, ``∂F/∂θ`` at the relaxed activities, one Adam update (lr 0.05). Batch 64, Fashion-
MNIST-sized input (784) and output (10), random data.

* pcgraph: ``make_train_step`` on the loaded model, with the default ``stack="auto"`` (every group
  of ≥ 8 identical layers stacked on the CPU, all stacked on an accelerator) and, if asked,
  ``stack=False`` (one op per layer) and ``stack=True``.
* hand-written: the same step in plain jnp, one small matmul per layer (a Python loop over layers
  inside the scan body), ``jax.grad`` of a hand-written energy, one ``jax.jit``.

Both start from the same weights; the script checks that they give the same energies and
updated weights before timing. Each function is warmed up, then timed in paired interleaved rounds
(``_paired``: every round calls each once); the ratio pcgraph / hand-written is the median of the
per-round ratios. Records go to ``benchmarks/results/mupc_speed.jsonl``.
The issue's target is ≤ 15 ms per iteration at width 512, H = T = 128 on an H100.

Full size (any device; the issue's GPU measurement)::

    python benchmarks/mupc_speed.py --width 512 --depth 128 --repeats 20

Reduced CPU runs (docs/results.md)::

    python benchmarks/mupc_speed.py --width 128 --depth 32 --repeats 40 --stack auto false true
    python benchmarks/mupc_speed.py --width 512 --depth 128 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import pcgraph  # noqa: E402
from pcgraph import make_train_step  # noqa: E402
from _paired import paired_rounds, summary  # noqa: E402
from _mupc_hand import W_LR, ACT_LR, hand_params, hand_written_step, stacked_step  # noqa: E402
from mupc_depth import machine, resnet_mupc  # noqa: E402

D, C = 784, 10


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="T (default: depth)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--stack", nargs="+", default=["auto"], choices=["auto", "false", "true"])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                         / "mupc_speed.jsonl"))
    args = ap.parse_args(argv)
    H, N, B = args.depth, args.width, args.batch
    T = args.steps or H

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
    y = jnp.asarray(np.eye(C, dtype=np.float32)[rng.integers(0, C, B)])
    model = resnet_mupc(H, N)
    stacks = {"auto": "auto", "false": False, "true": True}
    fns = {}
    ref = None
    for s in args.stack:
        net = pcgraph.build(model, seed=0, stack=stacks[s])
        step = make_train_step(
            net, "train", weight_optimizer=optax.adam(W_LR),
            inference=pcgraph.GradientDescent(T, optax.sgd(ACT_LR), activity_scale="batch"),
            init=pcgraph.Initialisation("forward"))
        st = step.init(net)
        batch = {"x": x, "y": y}
        t = time.perf_counter()
        new, _, m = step(net, st, batch)
        jax.block_until_ready(m["energy_end"])
        comp = time.perf_counter() - t
        fns[f"pcgraph stack={s}"] = (lambda step=step, net=net, st=st, batch=batch:
                                     step(net, st, batch)[2]["energy_end"], comp)
        if ref is None:
            ref = (net, new, m)
    net, new, m = ref
    hstep, hopt = hand_written_step(H, N, T)
    hp = hand_params(net, H)
    hst = hopt.init(hp)
    t = time.perf_counter()
    hp_new, _, F0, F1 = hstep(hp, hst, x, y)
    jax.block_until_ready(F1)
    fns["hand-written per-layer JAX"] = (lambda: hstep(hp, hst, x, y)[3], time.perf_counter() - t)
    sstep, sopt = stacked_step(H, N, T)
    sp = hand_params(net, H, stacked=True)
    sst = sopt.init(sp)
    t = time.perf_counter()
    jax.block_until_ready(sstep(sp, sst, x, y)[3])
    fns["hand-written stacked JAX"] = (lambda: sstep(sp, sst, x, y)[3], time.perf_counter() - t)

    # the same computation: energies and updated weights agree
    np.testing.assert_allclose(float(m["energy_start"]), float(F0), rtol=1e-4)
    np.testing.assert_allclose(float(m["energy_end"]), float(F1), rtol=1e-3)
    np.testing.assert_allclose(np.asarray(new.term_params(f"h{H // 2 - 1}->h{H // 2}[0]")[0]["W"]),
                               np.asarray(hp_new[1][H // 2 - 2]), rtol=1e-3, atol=1e-5)

    times = paired_rounds({k: fn for k, (fn, _) in fns.items()}, args.repeats)
    summ = summary(times, "hand-written per-layer JAX")
    print(f"# mupc_speed on {machine()}: width {N}, H = {H}, T = {T}, batch {B}, "
          f"{args.repeats} paired interleaved rounds; energies and weights checked equal")
    print("| implementation | ms / iteration (median) | min | compile s | ratio to hand-written "
          "(median of per-round ratios) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k, (_, comp) in fns.items():
        s = summ[k]
        s["compile_s"] = comp
        print(f"| {k} | {s['ms_median']:.1f} | {s['ms_min']:.1f} | {comp:.1f} | "
              f"{s['ratio_median']:.3f} |")
    if args.out:
        rec = {"benchmark": "mupc_speed", "width": N, "depth": H, "T": T, "batch": B,
               "rounds": args.repeats, "machine": machine(), "results": summ, "seconds": times,
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
