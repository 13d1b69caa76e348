"""Inpainting Fashion-MNIST with a partial-observation query (docs/results.md "Inpainting").

A generative PC model (models/inpaint.pcg: z[32] -> h[256] -> img[784]) is trained on whole
images; at test the query ``inpaint { clamp img where mask; read img }`` clamps the observed
pixels, relaxes the latent and hidden layer, and reads the missing pixels (their prediction).
Two masks: the bottom half missing, and a random 50 % of the pixels missing (a fresh mask per
image). Metric: MSE on the missing pixels only (pixels in [0, 1]).

Baselines computed in the same script on the same images and masks:
* mean-fill: each missing pixel takes its training-set mean;
* a BP autoencoder of the same size: the same decoder (32 -> 256 -> 784, tanh, sigmoid) behind a
  mirror encoder (masked image and mask, 1568 -> 256 -> 32), trained by backprop to reconstruct
  the whole image from inputs masked like the test (half the batches bottom-half, half random
  50 %), Adam, the same epochs and data.

Chosen on the validation split (seed 0): the number of inference steps of the inpainting query
(``--steps-grid``) and the BP learning rate (``--lrs``). Then ``--seeds`` runs; records in
benchmarks/results/inpaint.jsonl; ``--png`` draws a grid of test images.

    nice -n 10 python benchmarks/inpaint.py --fraction 0.1 --epochs 5 --seeds 0,1,2 \
        --png docs/img/inpaint.png
    python benchmarks/inpaint.py --table
"""

from __future__ import annotations

import argparse
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import (
    ci95,
    inference_with,
    ROOT,
    append_jsonl,
    demo_args,
    float_list,
    fmnist_splits,
    int_list,
    mean_sd,
    print_table_only,
    read_jsonl,
)

import pcgraph

MODEL = ROOT / "models" / "inpaint.pcg"
MASKS = ("half", "random")


def make_mask(kind: str, n: int, rng) -> np.ndarray:
    """1 = observed. ``half``: the top 14 rows; ``random``: each pixel with probability 1/2."""
    if kind == "half":
        m = np.zeros((n, 28, 28), np.float32)
        m[:, :14] = 1
        return m.reshape(n, 784)
    return (rng.random((n, 784)) < 0.5).astype(np.float32)


def missing_mse(pred, x, mask) -> float:
    miss = 1 - mask
    return float(np.sum(miss * (pred - x) ** 2) / np.sum(miss))


# ------------------------------------------------------------------------------ PC
def train_pc(x, seed, epochs, model=MODEL):
    net = pcgraph.build(pcgraph.load(model), seed=seed)
    x = x.reshape(len(x), *net.node_shape("img"))  # flat for inpaint.pcg, [1, 28, 28] for conv
    return pcgraph.fit(net, {"img": x}, epochs=epochs, seed=seed, eval_data=False,
                       trace_inference=False).net


def pc_fill(net, x, mask, steps):
    shape = net.node_shape("img")

    @eqx.filter_jit
    def fill(net, xb, mb):
        res = pcgraph.relax(net, "inpaint", {"img": xb, "mask": mb}, inference_with(net, steps))
        return net.get(res.h, "img")

    return np.concatenate([
        np.asarray(fill(net, x[i:i + 500].reshape(-1, *shape), mask[i:i + 500].reshape(-1, *shape)))
        .reshape(-1, 784) for i in range(0, len(x), 500)])


# ------------------------------------------------------------------------------ BP autoencoder
def _init(key, sizes):
    ps = []
    for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:])):
        ps.append({"W": jax.random.normal(k, (a, b)) / math.sqrt(a), "b": jnp.zeros(b)})
    return ps


def ae_apply(params, x, mask):
    enc, dec = params
    h = jnp.concatenate([x * mask, mask], axis=1)
    h = jnp.tanh(h @ enc[0]["W"] + enc[0]["b"])
    z = h @ enc[1]["W"] + enc[1]["b"]
    h = jnp.tanh(z @ dec[0]["W"] + dec[0]["b"])
    return jax.nn.sigmoid(h @ dec[1]["W"] + dec[1]["b"])


def train_ae(x, seed, epochs, lr, batch=64):
    key = jax.random.PRNGKey(seed)
    params = (_init(key, [1568, 256, 32]), _init(jax.random.fold_in(key, 1), [32, 256, 784]))
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb, mb):
        loss, g = jax.value_and_grad(lambda p: jnp.mean(jnp.sum((ae_apply(p, xb, mb) - xb) ** 2,
                                                                 axis=1)))(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        for i in range(0, len(x) - batch + 1, batch):
            xb = x[perm[i:i + batch]]
            mb = make_mask(MASKS[(i // batch) % 2], batch, rng)
            params, state, _ = step(params, state, xb, mb)
    return params


def ae_fill(params, x, mask):
    return np.asarray(jax.jit(ae_apply)(params, x, mask))


# ------------------------------------------------------------------------------ driver
def evaluate(fills, x, masks):
    return {f"{name}_{k}": missing_mse(fills[name][k], x, masks[k])
            for name in fills for k in MASKS}


def table(recs) -> str:
    final = [r for r in recs if r["phase"] == "final"]
    if not final:
        return "(no final records)"
    r0 = final[0]
    rows = [(f"Missing-pixel MSE on {r0['n_test']} test images (train {r0['n_train']} images, "
            f"{r0['epochs']} epochs; PC inpainting T = {r0['steps']}, BP lr {r0['ae_lr']:g}; "
            f"{len(final)} seeds, mean ± sd, 95 % CI of the PC − BP difference)"), "",
            "| mask | mean-fill | BP autoencoder | PC (`clamp img where mask`) | PC − BP (95 % CI) |",
            "| --- | --- | --- | --- | --- |"]
    for k in MASKS:
        pc = np.array([r[f"pc_{k}"] for r in final])
        ae = np.array([r[f"ae_{k}"] for r in final])
        mf = [r[f"mean_{k}"] for r in final]
        d = pc - ae
        ci = ci95(d)
        rows.append(f"| {k} | {mean_sd(mf, 4)} | {mean_sd(ae, 4)} | {mean_sd(pc, 4)} | "
                    f"{d.mean():+.4f} ± {ci:.4f} |")
    return "\n".join(rows)


def draw(path, x, masks, fills, n=8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from _common import save_figure

    rows = []
    for k in MASKS:
        shown = np.where(masks[k][:n] == 1, x[:n], 0.5)
        rows += [(f"{k}: observed", shown), (f"{k}: PC", fills["pc"][k][:n]),
                 (f"{k}: BP AE", fills["ae"][k][:n]), (f"{k}: mean-fill", fills["mean"][k][:n])]
    rows.insert(0, ("original", x[:n]))
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 0.95))
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(np.asarray(imgs[c]).reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    save_figure(fig, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--n-eval", type=int, default=1000, help="validation and test images used")
    ap.add_argument("--steps-grid", type=int_list, default=[20, 100])
    ap.add_argument("--lrs", type=float_list, default=[1e-3, 3e-3])
    ap.add_argument("--model", default="inpaint", choices=["inpaint", "conv_decoder"],
                    help="the PC model: models/inpaint.pcg or models/conv_decoder.pcg")
    demo_args(ap, "inpaint")
    args = ap.parse_args()
    if print_table_only(args, table):
        return
    _, xtr, xva, xte = fmnist_splits(args.fraction, args.n_eval)
    mean = xtr.mean(axis=0)
    rng = np.random.default_rng(123)
    vmasks = {k: make_mask(k, len(xva), rng) for k in MASKS}
    tmasks = {k: make_mask(k, len(xte), rng) for k in MASKS}
    base = {"fraction": args.fraction, "epochs": args.epochs, "n_train": len(xtr),
            "n_val": len(xva), "n_test": len(xte), "model": args.model}
    model = ROOT / "models" / f"{args.model}.pcg"

    # selection on validation, seed 0
    net = train_pc(xtr, 0, args.epochs, model)
    vs = {}
    for T in args.steps_grid:
        vs[T] = np.mean([missing_mse(pc_fill(net, xva, vmasks[k], T), xva, vmasks[k])
                         for k in MASKS])
        append_jsonl(args.out, {**base, "phase": "select", "what": "pc_steps", "steps": T,
                                "val_mse": float(vs[T])})
    T = min(vs, key=vs.get)
    va = {}
    for lr in args.lrs:
        p = train_ae(xtr, 0, args.epochs, lr)
        va[lr] = np.mean([missing_mse(ae_fill(p, xva, vmasks[k]), xva, vmasks[k]) for k in MASKS])
        append_jsonl(args.out, {**base, "phase": "select", "what": "ae_lr", "lr": lr,
                                "val_mse": float(va[lr])})
    lr = min(va, key=va.get)
    print("selected", T, lr, vs, va, flush=True)

    for s in args.seeds:
        net = net if s == 0 else train_pc(xtr, s, args.epochs, model)
        ae = train_ae(xtr, s, args.epochs, lr)
        fills = {"pc": {k: pc_fill(net, xte, tmasks[k], T) for k in MASKS},
                 "ae": {k: ae_fill(ae, xte, tmasks[k]) for k in MASKS},
                 "mean": {k: np.where(tmasks[k] == 1, xte, mean) for k in MASKS}}
        rec = {**base, "phase": "final", "seed": s, "steps": T, "ae_lr": lr,
               **evaluate(fills, xte, tmasks)}
        append_jsonl(args.out, rec)
        print(rec, flush=True)
        if args.png and s == args.seeds[0]:
            draw(args.png, xte, tmasks, fills)
    print(table(read_jsonl(args.out)))


if __name__ == "__main__":
    main()
