"""Learned vs fixed precision: test log-likelihood of the bottom half of Fashion-MNIST images
given the top half (models/precision.pcg), docs/results.md "Learned precision".

Variants (the node ``bottom``'s energy): ``fixed`` (precision 1, the default), ``fixed_val`` (the
``fixed`` network with the one scalar precision that maximises the validation likelihood,
1 / validation MSE), ``learned`` (one precision for the node), ``learned_diagonal`` (one per
pixel). Pixels are in [0, 1] plus uniform dequantisation noise U(0, 1/256) (a density on
quantised pixels is otherwise unbounded). The prediction for a test image is the forward pass
(the equilibrium of the test query: top clamped, bottom a free leaf); its log-likelihood is
Σ_j ½ log π_j − ½ π_j (y_j − μ_j)² − ½ log 2π, in nats per image.

Weights: Adam; learned precisions: their own Adam at ``--precision-lr`` (``precision_optimizer``).
The weight learning rate is chosen per variant on the validation split (seed 0), then the chosen
setting runs with ``--seeds``; records go to benchmarks/results/precision.jsonl.

    nice -n 10 python benchmarks/precision.py --fraction 0.1 --epochs 5 --seeds 0,1,2
    python benchmarks/precision.py --table
"""

from __future__ import annotations

import argparse
import math

import equinox as eqx
import numpy as np
import optax
from _common import (
    ci95,
    ROOT,
    append_jsonl,
    demo_args,
    float_list,
    fmnist_splits,
    mean_sd,
    print_table_only,
    read_jsonl,
)

import pcgraph
from pcgraph._energy import forward

MODEL = ROOT / "models" / "precision.pcg"
VARIANTS = {"fixed": "gaussian", "learned": "gaussian(precision = learned)",
            "learned_diagonal": "gaussian(precision = learned_diagonal)"}


def split(x, rng):
    x = x.reshape(len(x), -1) + rng.uniform(0, 1 / 256, (len(x), 784)).astype(np.float32)
    return {"top": x[:, :392], "bottom": x[:, 392:]}


def model_text(variant: str) -> str:
    text = MODEL.read_text()
    return text.replace("gaussian(precision = learned_diagonal)", VARIANTS[variant])


_fwd = eqx.filter_jit(lambda net, top: forward(net, {"top": top})["bottom"])


def mean_and_precision(net, data):
    mu = np.concatenate([np.asarray(_fwd(net, data["top"][i:i + 2000]))
                         for i in range(0, len(data["top"]), 2000)])
    prec = net.learned_precisions().get("bottom")
    return mu, (np.ones(392) if prec is None else np.broadcast_to(np.asarray(prec), (392,)))


def loglik(mu, y, prec) -> float:
    """Mean over images of Σ_j log N(y_j | μ_j, 1/π_j)."""
    ll = 0.5 * np.log(prec) - 0.5 * prec * (y - mu) ** 2 - 0.5 * math.log(2 * math.pi)
    return float(ll.sum(axis=1).mean())


def run(variant, lr, seed, args, sets):
    net = pcgraph.build(pcgraph.load(model_text(variant)), seed=seed)
    opt = optax.adam(lr)
    if variant != "fixed":  # the precisions' own rate: Adam moves log π ~ lr per step
        opt = pcgraph.precision_optimizer(opt, optax.adam(args.precision_lr))
    res = pcgraph.fit(net, sets["train"], epochs=args.epochs, weight_optimizer=opt, seed=seed,
                      eval_data=False, trace_inference=False)
    out = {}
    for name in ("val", "test"):
        mu, prec = mean_and_precision(res.net, sets[name])
        y = sets[name]["bottom"]
        out[f"{name}_ll"] = loglik(mu, y, prec)
        out[f"{name}_mse"] = float(np.mean((y - mu) ** 2))
    if variant == "fixed":  # the best single fixed precision, chosen on validation: 1 / val MSE
        p = 1.0 / out["val_mse"]
        out["fixed_val_precision"] = p
        for name in ("val", "test"):
            mu, _ = mean_and_precision(res.net, sets[name])
            out[f"{name}_ll_fixed_val"] = loglik(mu, sets[name]["bottom"], np.full(392, p))
    return out


def table(recs) -> str:
    final = [r for r in recs if r["phase"] == "final"]
    rows = ["| variant | weight lr (val) | seeds | test log-lik (nats/image) | test MSE |",
            "| --- | --- | --- | --- | --- |"]
    names = [("fixed", "test_ll", "fixed (precision 1)"),
             ("fixed", "test_ll_fixed_val", "fixed, best scalar on validation"),
             ("learned", "test_ll", "learned scalar"),
             ("learned_diagonal", "test_ll", "learned diagonal")]
    for v, key, label in names:
        rs = [r for r in final if r["variant"] == v]
        if not rs:
            continue
        ll = [r[key] for r in rs]
        ci = ci95(ll)
        rows.append(f"| {label} | {rs[0]['lr']:g} | {len(rs)} | {mean_sd(ll, 1)} (95 % CI ± "
                    f"{ci:.1f}) | {mean_sd([r['test_mse'] for r in rs], 4)} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lrs", type=float_list, default=[1e-3, 3e-3])
    ap.add_argument("--precision-lr", type=float, default=0.05)
    ap.add_argument("--variants", default="fixed,learned,learned_diagonal")
    demo_args(ap, "precision")
    args = ap.parse_args()
    if print_table_only(args, table):
        return
    _, xtr, xva, xte = fmnist_splits(args.fraction)
    rng = np.random.default_rng(0)
    sets = {"train": split(xtr, rng), "val": split(xva, rng), "test": split(xte, rng)}
    base = {"fraction": args.fraction, "epochs": args.epochs, "precision_lr": args.precision_lr,
            "n_train": len(xtr), "n_val": len(xva), "n_test": len(xte)}
    for v in args.variants.split(","):
        scores = {}
        for lr in args.lrs:  # selection on validation, seed 0
            r = run(v, lr, 0, args, sets)
            append_jsonl(args.out, {**base, "phase": "select", "variant": v, "lr": lr, "seed": 0,
                                    **r})
            scores[lr] = r["val_ll"]
            print(v, lr, r, flush=True)
        best = max(scores, key=scores.get)
        for s in args.seeds:
            r = run(v, best, s, args, sets)
            append_jsonl(args.out, {**base, "phase": "final", "variant": v, "lr": best, "seed": s,
                                    **r})
            print(v, best, s, r, flush=True)
    print(table(read_jsonl(args.out)))


if __name__ == "__main__":
    main()
