"""Hybrid predictive coding (``models/hybrid.pcg``) on Fashion-MNIST: amortised vs zero init.

``z -> h -> img`` is the generative path (the energy); ``img ~> z`` is the amortised bottom-up path,
outside the energy, trained by squared error to the relaxed z (DESIGN §1). Training clamps the image
only. Each initialisation is trained with T_train steps; then the test reconstruction error of the
image (its prediction from the relaxed latents, ``infer`` query: image clamped) is measured after
T_eval ∈ --eval-steps inference steps from that initialisation. Initialisations:

* ``amortised`` — z from the amortised path, h from its memory (``auto``)
* ``amortised-zero`` — z from the amortised path, h = 0 (isolates the amortiser)
* ``zero`` — every free node 0

The table answers: how many inference steps does each need to reach the error the generative path
reaches (zero init at the largest T_eval)?
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from _common import (D, ROOT, Timer, append_jsonl, build, int_list, load_model, machine,
                     mean_sd, print_table_only, read_jsonl, str_list)

from pcgraph import evaluate, fit, resolve_config

VARIANTS = {
    "amortised": (None, {}),
    "amortised-zero": (None, {"h": "zero"}),
    "zero": ("zero", {}),
}


def run_one(args, ds, name: str, seed: int) -> dict:
    init, over = VARIANTS[name]
    net = build(load_model(str(ROOT / "models" / "hybrid.pcg")), seed=seed)
    opts = {"learned_lr": args.learned_lr, "mem_patterns": args.patterns}
    with Timer() as t:
        res = fit(net, ds, epochs=args.epochs, batch_size=args.batch, steps=args.steps,
                  activity_lr=args.activity_lr, weight_lr=args.weight_lr, init=init,
                  init_nodes=over, init_options=opts, seed=seed, eval_data=False,
                  test_query="infer", trace_inference=False, train_eval_max=256)
    carry = res.state.carry
    sub = dataclasses.replace(ds, x_test=ds.x_test[: args.test_n], y_test=ds.y_test[: args.test_n])
    curve = {}
    for T in args.eval_steps:
        cfg = resolve_config(res.net.plan.settings, steps=T, activity_lr=args.activity_lr,
                             init=init, init_nodes=over, init_options=opts)
        ev = evaluate(res.net, sub, query="infer", inference=cfg.inference, init=cfg.init,
                      carry=carry)
        curve[T] = ev["mse"]
        print(f"  {name:15s} seed={seed} T_eval={T:3d}: test recon MSE {ev['mse']:.5f}", flush=True)
    return {"method": name, "seed": seed, "epochs": args.epochs, "T_train": args.steps,
            "mse": curve, "train_s": t.s, "smm_per_update": res.smm_per_update,
            "train_n": len(ds.x_train), "test_n": len(sub.x_test), "weight_lr": args.weight_lr,
            "activity_lr": args.activity_lr, "machine": machine()}


def _mse(r, t) -> float:
    """A record's error at T_eval = t (JSON turns the int keys into strings)."""
    return r["mse"][str(t)] if str(t) in r["mse"] else r["mse"][t]


def table(records) -> str:
    """Mean test error per initialisation and T_eval (± sd over seeds where there are several), then
    how many steps each needs to reach zero init's error at the largest T_eval."""
    rows = {}
    for r in records:
        rows.setdefault(r["method"], []).append(r)
    Ts = sorted({int(t) for r in records for t in r["mse"]})
    lines = ["| init | seeds | SMM/update | " + " | ".join(f"T_eval = {t}" for t in Ts) + " |",
             "| --- | --- | --- |" + " --- |" * len(Ts)]
    for m in [m for m in VARIANTS if m in rows]:
        rs = rows[m]
        cells = [mean_sd([_mse(r, t) for r in rs], 4) for t in Ts]
        lines.append(f"| {m} | {len(rs)} | {rs[0]['smm_per_update']:g} | " + " | ".join(cells) + " |")
    if "zero" in rows:
        target = np.mean([_mse(r, Ts[-1]) for r in rows["zero"]])
        lines += ["", f"Steps to reach the zero-init error at T_eval = {Ts[-1]} ({target:.4f}):", ""]
        for m in [m for m in VARIANTS if m in rows]:
            vals = {t: np.mean([_mse(r, t) for r in rows[m]]) for t in Ts}
            hit = next((t for t in Ts if vals[t] <= target + 1e-12), None)
            lines.append(f"- {m}: " + (f"T = {hit}" if hit is not None else "not reached"))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="amortised,amortised-zero,zero",
                   type=str_list)
    p.add_argument("--steps", type=int, default=20, help="T_train")
    p.add_argument("--eval-steps", type=int_list, default=[0, 1, 2, 5, 10, 20, 50])
    p.add_argument("--seeds", type=int_list, default=[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--test-n", type=int, default=10000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--weight-lr", type=float, default=1e-3)
    p.add_argument("--activity-lr", type=float, default=0.03, help="the model's setting")
    p.add_argument("--learned-lr", type=float, default=1e-3)
    p.add_argument("--patterns", type=int, default=24, help="stored patterns per memory (seed 004)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/init_hybrid.jsonl")
    p.add_argument("--table", action="store_true")
    args = p.parse_args(argv)
    if print_table_only(args, table):
        return 0
    ds = D.load("fashion-mnist", data_dir=args.data_dir, normalize="unit", fraction=args.fraction)
    print(machine(), flush=True)
    t0 = time.perf_counter()
    for seed in args.seeds:
        for name in args.methods:
            append_jsonl(args.out, run_one(args, ds, name, seed))
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    print(table(read_jsonl(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
