"""Associative memory on Fashion-MNIST: recall MSE vs the number of stored images N (capacity
curve) for a PC memory (models/memory.pcg) and a modern Hopfield network (docs/results.md
"Associative memory").

For each N and seed, N training images (class-stratified by the seed) are stored: the PC network
is trained on them alone (``--updates`` weight updates, batches of min(N, 64)); the Hopfield
network stores them as its patterns X and retrieves ``softmax(β·sim(X, ξ))ᵀX`` in one step
(sim: minus the squared distance over the seen pixels), with the β of ``--betas`` that is best
for that N (the baseline's best case). Cues: ``occluded`` — the
bottom half of the image missing (PC: the query ``recall { clamp img where mask }``; Hopfield: the
similarity over the seen pixels); ``noisy`` — Gaussian noise of sd ``--noise`` on every pixel (PC: the query
``denoise`` clamps the noisy image, the answer is the prediction of img after inference). Metric:
MSE between the recalled and the stored image over all pixels, mean over the N images.

Selection (neither side is tuned on the test cues): the Hopfield β (``--betas``) and the PC
recall's inference steps T (``--steps-grid``) are chosen per N, seed and cue type on validation
cues of the same kind drawn apart from the test ones — the right half missing (test: the bottom
half) and another draw of the noise. Sizes are recorded: the PC network's parameters and the
Hopfield network's stored numbers (N·784).

    nice -n 10 python benchmarks/memory.py --ns 16,64,256 --seeds 0,1,2 --png docs/img/memory.png
    python benchmarks/memory.py --table
"""

from __future__ import annotations

import argparse
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    inference_with,
    ROOT,
    D,
    append_jsonl,
    ci95,
    demo_args,
    float_list,
    int_list,
    mean_sd,
    print_table_only,
    save_figure,
)

import pcgraph
from pcgraph import predictions

MODEL = ROOT / "models" / "memory.pcg"
CUES = ("occluded", "noisy")


def cues(x, noise, rng, val=False):
    """Test cues: the bottom half missing, noise; validation cues (``val``): the right half
    missing, another noise draw."""
    mask = np.zeros((len(x), 28, 28), np.float32)
    if val:
        mask[:, :, :14] = 1
    else:
        mask[:, :14] = 1
    mask = mask.reshape(len(x), 784)
    return {"occluded": (x * mask, mask),
            "noisy": ((x + noise * rng.standard_normal(x.shape)).astype(np.float32), None)}


def pc_recall(net, cue, mask, steps):
    @eqx.filter_jit
    def occl(net, xb, mb):
        return net.get(pcgraph.relax(net, "recall", {"img": xb, "mask": mb}, inference_with(net, steps)).h,
                       "img")

    @eqx.filter_jit
    def noisy(net, xb):
        res = pcgraph.relax(net, "denoise", {"img": xb}, inference_with(net, steps))
        return predictions(net, res.h)["img"]

    return np.asarray(occl(net, cue, mask) if mask is not None else noisy(net, cue))


def hopfield(X, cue, beta, mask=None):
    """One modern-Hopfield retrieval ``softmax(β·sim(X, ξ))ᵀ X`` with the negative squared
    distance over the seen pixels as similarity (the universal-Hopfield form that retrieves best;
    a plain dot product favours bright patterns)."""
    m = np.ones_like(cue) if mask is None else mask
    sim = -((cue * m) ** 2).sum(1)[:, None] + 2 * (cue * m) @ X.T - m @ (X**2).T
    return np.asarray(jax.nn.softmax(jnp.asarray(beta * sim), axis=1) @ X)


def mse(a, b) -> float:
    return float(np.mean((a - b) ** 2))


def table(recs) -> str:
    if not recs:
        return "(no records)"
    recs = [r for r in recs if r.get("selection") == "validation cues"]
    if not recs:
        return "(no records with validation-selected settings)"
    ns = sorted({r["n"] for r in recs})
    r0 = recs[0]
    rows = [(f"Recall MSE (all pixels, mean over the N stored images; {r0['updates']} weight "
            f"updates per N, recall T and β chosen on validation cues, noise sd {r0['noise']}; "
            f"mean ± sd over seeds; PC − Hopfield: mean paired difference ± 95 % CI)"), "",
            "| N | seeds | PC params / Hopfield numbers | occluded: PC (T) | occluded: Hopfield (β) "
            "| PC − Hopfield | noisy: PC (T) | noisy: Hopfield (β) | PC − Hopfield |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in ns:
        rs = [r for r in recs if r["n"] == n]
        cells = [f"{rs[0]['pc_params']:,} / {rs[0]['hopfield_numbers']:,}"]
        for c in CUES:
            d = [r[f"pc_{c}"] - r[f"hop_{c}"] for r in rs]
            ts = sorted({r[f"steps_{c}"] for r in rs})
            bs = sorted({r[f"beta_{c}"] for r in rs})
            cells += [f"{mean_sd([r[f'pc_{c}'] for r in rs], 4)} ({'/'.join(map(str, ts))})",
                      f"{mean_sd([r[f'hop_{c}'] for r in rs], 4)} ({'/'.join(f'{b:g}' for b in bs)})",
                      f"{np.mean(d):+.4f} ± {ci95(d):.4f}"]
        rows.append(f"| {n} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def draw(path, recs_imgs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs, imgs = recs_imgs
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    ns = sorted({r["n"] for r in recs})
    for ax, c in zip(axes, CUES):
        for m, label in (("pc", "PC (memory.pcg)"), ("hop", "modern Hopfield")):
            mu = [np.mean([r[f"{m}_{c}"] for r in recs if r["n"] == n]) for n in ns]
            sd = [np.std([r[f"{m}_{c}"] for r in recs if r["n"] == n]) for n in ns]
            ax.errorbar(ns, mu, yerr=sd, marker="o", label=label, capsize=3)
        ax.set_xscale("log")
        ax.set_xlabel("stored images N")
        ax.set_ylabel("recall MSE")
        ax.set_title(f"{c} cue")
        ax.legend(fontsize=7)
    save_figure(fig, path)
    if imgs is not None:
        rows = len(imgs)
        fig, axes = plt.subplots(rows, 8, figsize=(8 * 0.9, rows * 0.95))
        for r, (label, im) in enumerate(imgs):
            for c in range(8):
                axes[r, c].imshow(np.clip(im[c], 0, 1).reshape(28, 28), cmap="gray", vmin=0,
                                  vmax=1)
                axes[r, c].set_xticks([])
                axes[r, c].set_yticks([])
            axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
        save_figure(fig, str(path).replace(".png", "_recall.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", type=int_list, default=[16, 64, 256])
    ap.add_argument("--updates", type=int, default=400)
    ap.add_argument("--steps-grid", type=int_list, default=[20, 100],
                    help="inference steps of the recall, chosen on validation cues")
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--betas", type=float_list, default=[0.1, 1.0, 10.0])
    demo_args(ap, "memory")
    args = ap.parse_args()
    if print_table_only(args, table):
        return
    ds = D.load("fashion-mnist", normalize="unit")
    X_all = ds.x_train.reshape(len(ds.x_train), 784)
    recs, shown = [], None
    for n in args.ns:
        for s in args.seeds:
            rng = np.random.default_rng([s, n])
            X = X_all[rng.choice(len(X_all), n, replace=False)]
            bs = min(n, 64)
            epochs = max(1, math.ceil(args.updates / (n // bs)))
            net = pcgraph.build(pcgraph.load(MODEL), seed=s)
            net = pcgraph.fit(net, {"img": X}, epochs=epochs, batch_size=bs, seed=s,
                              eval_data=False, trace_inference=False).net
            rec = {"n": n, "seed": s, "updates": epochs * (n // bs), "steps": args.steps_grid,
                   "noise": args.noise, "pc_params": int(net.n_params()),
                   "hopfield_numbers": int(X.size), "selection": "validation cues"}
            val_cues = cues(X, args.noise, rng, val=True)
            for c, (cue, mask) in cues(X, args.noise, rng).items():
                vcue, vmask = val_cues[c]
                vpc = {T: mse(pc_recall(net, vcue, vmask, T), X) for T in args.steps_grid}
                vhs = {b: mse(hopfield(X, vcue, b, vmask), X) for b in args.betas}
                T, beta = min(vpc, key=vpc.get), min(vhs, key=vhs.get)
                pc = pc_recall(net, cue, mask, T)
                rec.update({f"pc_{c}": mse(pc, X), f"hop_{c}": mse(hopfield(X, cue, beta, mask), X),
                            f"beta_{c}": beta, f"steps_{c}": T,
                            f"val_pc_{c}": vpc[T], f"val_hop_{c}": vhs[beta]})
                if n == args.ns[-1] and s == args.seeds[0]:
                    shown = (shown or [("stored", X[:8])]) + [
                        (f"{c} cue", cue[:8]), (f"{c}: PC", pc[:8]),
                        (f"{c}: Hopfield", hopfield(X, cue[:8], beta,
                                                    None if mask is None else mask[:8]))]
            append_jsonl(args.out, rec)
            recs.append(rec)
            print(rec, flush=True)
    if args.png:
        draw(args.png, (recs, shown))
    print(table(recs))


if __name__ == "__main__":
    main()
