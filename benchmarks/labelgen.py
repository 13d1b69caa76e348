"""One label-conditioned PC model generates and classifies (docs/results.md "Generation and
classification by one model").

models/labelgen.pcg is trained on (label, image) pairs. Classification clamps a test image and
leaves the label free (query ``classify``; the label is never clamped at test), answered two ways:
``relaxed`` (the label relaxed as a real vector by inference, argmax) and ``enumerated``
(``pcgraph.relax_classes``: each one-hot label clamped in turn, the rest relaxed, least energy
wins). Generation is ancestral sampling: query ``style`` reads the class's mean style μ_z(label),
``generate`` clamps the label and z = μ_z + τ·ε (ε ~ N(0, I)) and reads the image; the samples
are checked by a backprop MLP trained separately on the same training images (the rate at which
it recognises the intended class) and by the model's own enumerated classification. The number
of inference steps of each classification readout is chosen on the validation split (seed 0).

    nice -n 10 python benchmarks/labelgen.py --fraction 0.1 --epochs 4 --n-eval 1000 \
        --seeds 0,1,2 --png docs/img/labelgen.png
    python benchmarks/labelgen.py --table
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import (
    ROOT,
    append_jsonl,
    ci95,
    demo_args,
    float_list,
    fmnist_splits,
    inference_with,
    int_list,
    mean_sd,
    print_table_only,
    read_jsonl,
    save_figure,
)

import pcgraph

MODEL = ROOT / "models" / "labelgen.pcg"
CHUNK = 500


def relaxed_accuracy(net, x, y, steps):
    """Accuracy (%) of ``classify`` with the label relaxed as a vector (``pcgraph.evaluate``:
    argmax of the read-out label)."""
    return 100 * pcgraph.evaluate(net, {"img": x, "label": y}, query="classify",
                                  inference=inference_with(net, steps),
                                  batch_size=CHUNK)["accuracy"]


def classify_enumerated(net, x, steps):
    inf = inference_with(net, steps)
    return np.concatenate([
        np.asarray(pcgraph.relax_classes(net, "classify", {"img": x[i:i + CHUNK]}, "label", inf).classes)
        for i in range(0, len(x), CHUNK)])


def enumerated_accuracy(net, x, y, steps):
    """Accuracy (%) of ``classify`` by ``relax_classes`` (least energy over the 10 labels)."""
    return float(np.mean(classify_enumerated(net, x, steps) == y) * 100)


READOUTS = {"relaxed": relaxed_accuracy, "enumerated": enumerated_accuracy}


def generate(net, labels, tau, seed):
    """Ancestral samples: z = μ_z(label) + τ·ε, then the image's prediction from (label, z)."""
    labels = np.asarray(labels, np.int32)
    mu = net.get(pcgraph.relax(net, "style", {"label": labels}, inference_with(net, 0)).h, "z")
    eps = jax.random.normal(jax.random.PRNGKey(seed), mu.shape)
    res = pcgraph.relax(net, "generate", {"label": labels, "z": mu + tau * eps}, inference_with(net, 0))
    return np.asarray(net.get(res.h, "img"))


def bp_classifier(x, y, seed, epochs=10, hidden=256):
    """A 784 → 256 (tanh) → 10 MLP trained by backprop (Adam 1e-3, batch 64): the judge of the
    samples, trained on the same training images as the PC model."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(1000 + seed))
    p = {"W1": jax.random.normal(k1, (x.shape[1], hidden)) * x.shape[1] ** -0.5,
         "b1": jnp.zeros(hidden), "W2": jax.random.normal(k2, (hidden, 10)) * hidden ** -0.5,
         "b2": jnp.zeros(10)}

    def logits(p, x):
        return jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]

    opt = optax.adam(1e-3)

    @jax.jit
    def step(p, o, xb, yb):
        g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(logits(p, xb), yb).mean())(p)
        u, o = opt.update(g, o)
        return optax.apply_updates(p, u), o

    o = opt.init(p)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        for i in range(0, len(x) - 63, 64):
            p, o = step(p, o, x[perm[i:i + 64]], y[perm[i:i + 64]])
    return lambda xs: np.asarray(jax.jit(logits)(p, xs)).argmax(axis=1)


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


def _row(label, vals, extra=""):
    return f"| {label} |{extra} {len(vals)} | {mean_sd(vals, 1)} (± {ci95(vals):.1f}) |"


def table(recs) -> str:
    final = [r for r in recs if r["phase"] == "final"]
    if not final:
        return "(no final records)"
    rows = ["| classification readout (test images) | T (val) | seeds | accuracy %, mean ± sd (95 % CI) |",
            "| --- | --- | --- | --- |"]
    for rd, label in (("relaxed", "`classify`, the label relaxed as a vector, argmax"),
                      ("enumerated", "`classify` by `relax_classes` (least energy over 10 labels)")):
        rows.append(_row(label, [r[f"test_accuracy_{rd}"] for r in final], f" {final[0][f'steps_{rd}']} |"))
    rows.append(_row("the judge: backprop MLP on the same training images", [r["judge_test_accuracy"] for r in final], " – |"))
    rows += ["", "| samples z = μ_z(label) + τ·ε | seeds | judged the intended class %, mean ± sd (95 % CI) "
             "| the model's own `classify` agrees % | pixel sd within a class |",
             "| --- | --- | --- | --- | --- |"]
    for tau in final[0]["taus"]:
        k = f"{tau:g}"
        judge = [r["gen_judge"][k] for r in final]
        own = [r["gen_own"][k] for r in final]
        sd = [r["gen_sd"][k] for r in final]
        rows.append(f"| τ = {k} | {len(final)} | {mean_sd(judge, 1)} (± {ci95(judge):.1f}) | "
                    f"{mean_sd(own, 1)} | {mean_sd(sd, 3)} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--steps-grid", type=int_list, default=[20, 100])
    ap.add_argument("--taus", type=float_list, default=[0.0, 0.5, 1.0])
    ap.add_argument("--n-gen", type=int, default=100, help="samples per class and τ")
    ap.add_argument("--png-tau", type=float, default=0.5)
    demo_args(ap, "labelgen")
    args = ap.parse_args()
    if print_table_only(args, table):
        return
    ds, xtr, xva, xte = fmnist_splits(args.fraction, args.n_eval)
    yva, yte = ds.y_val[:args.n_eval], ds.y_test[:args.n_eval]
    base = {"fraction": args.fraction, "epochs": args.epochs, "n_train": len(xtr),
            "n_val": len(xva), "n_test": len(xte), "model": "labelgen (label -> z)"}
    labels = np.repeat(np.arange(10), args.n_gen)
    best = None
    for s in args.seeds:
        net = pcgraph.build(pcgraph.load(MODEL), seed=s)
        net = pcgraph.fit(net, {"label": ds.y_train, "img": xtr}, epochs=args.epochs,
                          seed=s, eval_data=False, trace_inference=False).net
        if best is None:
            val = {}
            for rd, fn in READOUTS.items():
                for T in args.steps_grid:
                    val[rd, T] = fn(net, xva, yva, T)
                    append_jsonl(args.out, {**base, "phase": "select", "seed": s, "readout": rd,
                                            "steps": T, "val_accuracy": val[rd, T]})
            best = {rd: max(args.steps_grid, key=lambda T: val[rd, T]) for rd in READOUTS}
            if args.png:
                draw(args.png, generate(net, np.repeat(np.arange(10), 8), args.png_tau, s), 8,
                     ds.classes)
        judge = bp_classifier(xtr, ds.y_train, s)
        rec = {**base, "phase": "final", "seed": s, "taus": args.taus, "n_gen": args.n_gen,
               "judge_test_accuracy": float(np.mean(judge(xte) == yte) * 100),
               "gen_judge": {}, "gen_own": {}, "gen_sd": {}}
        for rd, fn in READOUTS.items():
            rec[f"steps_{rd}"] = best[rd]
            rec[f"test_accuracy_{rd}"] = fn(net, xte, yte, best[rd])
        for tau in args.taus:
            imgs = generate(net, labels, tau, 10_000 + s)
            k = f"{tau:g}"
            rec["gen_judge"][k] = float(np.mean(judge(imgs) == labels) * 100)
            rec["gen_own"][k] = float(np.mean(classify_enumerated(net, imgs, best["enumerated"]) == labels) * 100)
            rec["gen_sd"][k] = float(np.mean([imgs[labels == c].std(axis=0).mean() for c in range(10)]))
        append_jsonl(args.out, rec)
        print(rec, flush=True)
    print(table(read_jsonl(args.out)))


if __name__ == "__main__":
    main()
