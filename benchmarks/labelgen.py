"""One label-conditioned PC model generates and classifies (docs/results.md "Generation and
classification by one model").

models/labelgen.pcg is trained on (label, image) pairs. ``generate`` clamps a one-hot label and a
style z ~ N(0, 1) and reads the image (a 10 classes × 8 samples PNG); ``classify`` clamps a test
image and reads the label that inference settles at (argmax; the label is never clamped at test).
A second readout scores each class by the relaxed energy with that label clamped (least energy
wins). The number of inference steps of each readout is chosen on the validation split (seed 0).

    nice -n 10 python benchmarks/labelgen.py --fraction 0.1 --epochs 4 --seeds 0,1,2 \
        --png docs/img/labelgen.png
    python benchmarks/labelgen.py --table
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    ci95,
    inference_with,
    ROOT,
    append_jsonl,
    demo_args,
    fmnist_splits,
    int_list,
    mean_sd,
    print_table_only,
    read_jsonl,
    save_figure,
)

import pcgraph

MODEL = ROOT / "models" / "labelgen.pcg"


def classify(net, x, steps):
    @eqx.filter_jit
    def read(net, xb):
        return net.get(pcgraph.relax(net, "classify", {"img": xb}, inference_with(net, steps)).h, "label")

    return np.concatenate([np.asarray(read(net, x[i:i + 500])).argmax(axis=1)
                           for i in range(0, len(x), 500)])


def classify_by_energy(net, x, steps):
    """For each class c: clamp the label c and the image (query train), relax z and h, and score
    the class by the relaxed energy of each image; the prediction is the class of least energy."""
    q = pcgraph.compile_query(net, "train")

    @eqx.filter_jit
    def scores(net, xb):
        out = []
        for c in range(10):
            lab = jnp.full((len(xb),), c, jnp.int32)
            res = pcgraph.relax(net, q, {"label": lab, "img": xb}, inference_with(net, steps))
            per = jax.vmap(lambda hs: pcgraph.energy(net, tuple(a[:, None] for a in hs), q),
                           in_axes=(1,))(res.h)
            out.append(per)
        return jnp.stack(out, axis=1)

    return np.concatenate([np.asarray(scores(net, x[i:i + 500])).argmin(axis=1)
                           for i in range(0, len(x), 500)])


def generate(net, n_per_class, seed):
    labels = np.repeat(np.arange(10), n_per_class)
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (len(labels), 16)))
    res = pcgraph.relax(net, "generate", {"label": labels.astype(np.int32), "z": z}, inference_with(net, 0))
    return np.asarray(net.get(res.h, "img"))


READOUTS = {"inferred": classify, "energy": classify_by_energy}


def draw(path, imgs, n_per_class, classes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(10, n_per_class, figsize=(n_per_class * 0.8, 10 * 0.8))
    for i in range(10):
        for j in range(n_per_class):
            ax = axes[i, j]
            ax.imshow(imgs[i * n_per_class + j].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(classes[i], fontsize=6, rotation=0, ha="right", va="center")
    save_figure(fig, path)


def table(recs) -> str:
    final = [r for r in recs if r["phase"] == "final"]
    if not final:
        return "(no final records)"
    r0 = final[0]
    rows = ["| readout | train images, epochs | T (val) | seeds | test accuracy % |",
            "| --- | --- | --- | --- | --- |"]
    for rd, label in (("inferred", "`classify` query: the label relaxed, argmax"),
                      ("energy", "least relaxed energy over the 10 clamped labels")):
        acc = [r[f"test_accuracy_{rd}"] for r in final]
        ci = ci95(acc)
        rows.append(f"| {label} | {r0['n_train']}, {r0['epochs']} | {r0[f'steps_{rd}']} | "
                    f"{len(final)} | {mean_sd(acc, 2)} (95 % CI ± {ci:.2f}) |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--steps-grid", type=int_list, default=[20, 100])
    demo_args(ap, "labelgen")
    args = ap.parse_args()
    if print_table_only(args, table):
        return
    ds, xtr, xva, xte = fmnist_splits(args.fraction, args.n_eval)
    yva, yte = ds.y_val[:args.n_eval], ds.y_test[:args.n_eval]
    base = {"fraction": args.fraction, "epochs": args.epochs, "n_train": len(xtr),
            "n_val": len(xva), "n_test": len(xte)}
    nets = {}
    for s in args.seeds:
        net = pcgraph.build(pcgraph.load(MODEL), seed=s)
        nets[s] = pcgraph.fit(net, {"label": ds.y_train, "img": xtr}, epochs=args.epochs,
                              seed=s, eval_data=False, trace_inference=False).net
        if s == args.seeds[0]:
            val = {}
            for rd, fn in READOUTS.items():
                for T in args.steps_grid:
                    val[rd, T] = float(np.mean(fn(nets[s], xva, T) == yva) * 100)
                    append_jsonl(args.out, {**base, "phase": "select", "readout": rd,
                                            "steps": T, "val_accuracy": val[rd, T]})
            best = {rd: max(args.steps_grid, key=lambda T: val[rd, T]) for rd in READOUTS}
            if args.png:
                draw(args.png, generate(nets[s], 8, s), 8, ds.classes)
        rec = {**base, "phase": "final", "seed": s}
        for rd, fn in READOUTS.items():
            rec[f"steps_{rd}"] = best[rd]
            rec[f"test_accuracy_{rd}"] = float(np.mean(fn(nets[s], xte, best[rd]) == yte) * 100)
        append_jsonl(args.out, rec)
        print(rec, flush=True)
    print(table(read_jsonl(args.out)))


if __name__ == "__main__":
    main()
