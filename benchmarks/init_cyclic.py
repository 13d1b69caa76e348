"""A cyclic graph on scikit-learn's 8×8 digits: test accuracy per initialisation and T.

``models/cyclic_digits.pcg``: img -> a -> b -> label with the feedback edge b -> a (a <-> b is a
cycle, so no forward pass exists, Prop. 3.2). Training clamps img and label; the test query clamps
only img, relaxes a and b for T steps from the initialisation and reads label (a free leaf: its
prediction). Methods:

* ``mem``   — a modern-Hopfield memory per node, keyed on the image (``auto`` picks it here)
* ``sweep`` — a forward sweep with the DFS feedback edge b -> a left out (opt-in)
* ``zero``

at T ∈ --steps (default 5, 10, 20), the same T and method in training and at test. Target: ≥ 93 %
with mem at T ≤ 20. 15 % of the training set is held out for validation (class-stratified, split
seed 0); ``pcgraph.fit`` trains and evaluates, every ``--eval-every`` epochs validation and test
accuracy are recorded, and the table
reports test at the evaluation with the best validation accuracy and at the last one. Records:
``benchmarks/results/init_cyclic.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import pcgraph  # noqa: E402 - after _common, which puts the repository on sys.path
from _common import (D, ROOT, append_jsonl, build, int_list, load_model, machine, mean_sd, optax,
                     print_table_only, read_jsonl, str_list)

from pcgraph import make_eval_step


def run_one(args, ds, method: str, T: int, seed: int) -> dict:
    net = build(load_model(str(ROOT / "models" / "cyclic_digits.pcg")), seed=seed)
    opts = ({"mem_patterns": args.patterns, "mem_delta": args.delta,
             "learned_lr": args.learned_lr} if method == "mem" else {})
    config = pcgraph.resolve_config(net.plan.settings, steps=T, activity_lr=args.activity_lr,
                                    init=method, init_options=opts, epochs=args.epochs,
                                    batch_size=args.batch,
                                    weight_optimizer=optax.adam(args.weight_lr))
    points, times = [], []

    def on_epoch(e):  # fit evaluates every epoch (the trained memories: its carry); kept: every
        if e["kind"] != "epoch":  # --eval-every epochs and the last
            return
        m = e["metrics"]
        times.append(m["epoch_time_s"])
        if m["epoch"] % args.eval_every == 0 or m["epoch"] == args.epochs:
            acc = {"val": 100 * m["val_accuracy"], "test": 100 * m["test_accuracy"]}
            points.append({"epoch": m["epoch"], **acc, "train_s": float(np.sum(times)),
                           "smm": m["total_smm"]})
            print(f"  {method:6s} T={T:3d} seed={seed} epoch {m['epoch']}: val {acc['val']:.2f}% "
                  f"test {acc['test']:.2f}%", flush=True)

    res = pcgraph.fit(net, ds, config, seed=seed, callback=on_epoch, eval_batch_size=360,
                      train_eval_max=0, trace_inference=False)
    accs = [p["test"] for p in points]
    smm = ev_smm = res.smm_per_batch
    ev = make_eval_step(net, "test", inference=config.inference, init=config.init)
    if ev.initialiser is not None:
        ev_smm = 2 * T + ev.initialiser.smm  # the test query's cost (label not clamped)
    return {"method": method, "T": T, "seed": seed, "epochs": args.epochs, "test_acc": accs,
            "final": accs[-1], "epochs_eval": points, "train_s": float(np.sum(times)),
            "steps": res.state.step, "smm_per_update": smm, "smm_test": ev_smm,
            "learned_lr": args.learned_lr, "patterns": args.patterns, "delta": args.delta,
            "weight_lr": args.weight_lr, "activity_lr": args.activity_lr, "batch": args.batch,
            "machine": machine()}


def table(records):
    rows = {}
    for r in records:
        rows.setdefault((r["method"], r["T"]), []).append(r)
    from _evidence import chosen

    lines = ["| init | T (train = test) | test acc. % at the val-chosen epoch (mean ± sd) | "
             "last epoch | seeds | epochs | SMM/update | SMM/test sample | train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = {"mem": 0, "sweep": 1, "zero": 2}
    for k in sorted(rows, key=lambda k: (order.get(k[0], 9), k[1])):
        rs = rows[k]
        at = [chosen({"epochs": r["epochs_eval"]})["test"] for r in rs]
        lines.append(f"| {k[0]} | {k[1]} | {mean_sd(at)} | {mean_sd([r['final'] for r in rs])} | "
                     f"{len(rs)} | "
                     f"{rs[0]['epochs']} | {rs[0]['smm_per_update']} | {rs[0].get('smm_test')} | "
                     f"{np.mean([r['train_s'] for r in rs]):.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="mem,sweep,zero", type=str_list)
    p.add_argument("--steps", type=int_list, default=[5, 10, 20])
    p.add_argument("--seeds", type=int_list, default=[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--weight-lr", type=float, default=1e-3)
    p.add_argument("--activity-lr", type=float, default=0.1)
    p.add_argument("--patterns", type=int, default=256)
    p.add_argument("--learned-lr", type=float, default=1e-2, help="Adam lr of the memories")
    p.add_argument("--delta", type=float, default=200.0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "init_cyclic.jsonl"))
    p.add_argument("--table", action="store_true")
    args = p.parse_args(argv)
    if print_table_only(args, table):
        return 0
    ds = D.load("digits", val_fraction=0.15, seed=0)
    print(machine(), flush=True)
    t0 = time.perf_counter()
    for seed in args.seeds:
        for method in args.methods:
            for T in args.steps:
                append_jsonl(args.out, run_one(args, ds, method, T, seed))
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    print(table(read_jsonl(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
