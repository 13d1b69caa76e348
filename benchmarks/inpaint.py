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

``--model conv_decoder`` (``--channels c1,c2``): the PC model is models/conv_decoder.pcg and the
BP baseline a conv autoencoder of the same size: the same decoder (16 -> c1x7x7 -> c2x14x14 ->
1x28x28, stride-2 4x4 transposed convolutions, tanh, linear image) behind a mirror stride-2 conv
encoder of the masked image and its mask; records in benchmarks/results/inpaint_conv.jsonl.

Chosen on the validation split (seed 0): the number of inference steps of the inpainting query
(``--steps-grid``) and the BP learning rate (``--lrs``). Then ``--seeds`` runs; records in
benchmarks/results/inpaint.jsonl; ``--png`` draws a grid of test images.

    nice -n 10 python benchmarks/inpaint.py --fraction 0.1 --epochs 5 --seeds 0,1,2 \
        --png docs/img/inpaint.png
    python benchmarks/inpaint.py --table
    nice -n 10 python benchmarks/inpaint.py --model conv_decoder --channels 16,8 --fraction 0.03 \
        --epochs 3 --n-eval 300 --steps-grid 20,50 --seeds 0,1,2 \
        --out benchmarks/results/inpaint_conv.jsonl --png docs/img/inpaint_conv.png
"""

from __future__ import annotations

import argparse
import math
import time

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
def train_pc(x, seed, epochs, model=MODEL, params=None):
    net = pcgraph.build(pcgraph.load(model, params=params), seed=seed)
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


_DN = ("NCHW", "OIHW", "NCHW")


def _conv_init(key, o, i, k=4):
    return {"W": jax.random.normal(key, (o, i, k, k)) / math.sqrt(i * k * k), "b": jnp.zeros(o)}


def conv_ae_init(key, channels):
    """The conv decoder of models/conv_decoder.pcg (16 -> c1x7x7 tanh -> c2x14x14 tanh -> 1x28x28,
    linear) behind a mirror encoder of the masked image and its mask (2x28x28 -> c2x14x14 ->
    c1x7x7 -> 16), stride-2 4x4 (transposed) convolutions."""
    c1, c2 = channels
    k = jax.random.split(key, 6)
    enc = [_conv_init(k[0], c2, 2), _conv_init(k[1], c1, c2), _init(k[2], [c1 * 49, 16])[0]]
    dec = [_init(k[3], [16, c1 * 49])[0], _conv_init(k[4], c2, c1), _conv_init(k[5], 1, c2)]
    return enc, dec


def _convT(x, p):  # the engine's transposed convolution (kernel 4, stride 2, padding 1)
    y = jax.lax.conv_general_dilated(x, p["W"][:, :, ::-1, ::-1], (1, 1), [(2, 2), (2, 2)],
                                     lhs_dilation=(2, 2), dimension_numbers=_DN)
    return y + p["b"][None, :, None, None]


def conv_ae_apply(params, x, mask):
    enc, dec = params
    B = x.shape[0]
    h = jnp.concatenate([(x * mask).reshape(B, 1, 28, 28), mask.reshape(B, 1, 28, 28)], axis=1)
    for p in enc[:2]:
        h = jnp.tanh(jax.lax.conv_general_dilated(h, p["W"], (2, 2), [(1, 1), (1, 1)],
                                                  dimension_numbers=_DN)
                     + p["b"][None, :, None, None])
    z = h.reshape(B, -1) @ enc[2]["W"] + enc[2]["b"]
    c1 = dec[1]["W"].shape[1]
    h = jnp.tanh(z @ dec[0]["W"] + dec[0]["b"]).reshape(B, c1, 7, 7)
    h = jnp.tanh(_convT(h, dec[1]))
    return _convT(h, dec[2]).reshape(B, 784)


def train_ae(x, seed, epochs, lr, batch=64, channels=None):
    """The dense autoencoder, or the conv one when ``channels = (c1, c2)`` is given."""
    key = jax.random.PRNGKey(seed)
    if channels is None:
        params = (_init(key, [1568, 256, 32]), _init(jax.random.fold_in(key, 1), [32, 256, 784]))
        apply = ae_apply
    else:
        params, apply = conv_ae_init(key, channels), conv_ae_apply
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb, mb):
        loss, g = jax.value_and_grad(lambda p: jnp.mean(jnp.sum((apply(p, xb, mb) - xb) ** 2,
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


def ae_fill(params, x, mask, conv=False):
    return np.asarray(jax.jit(conv_ae_apply if conv else ae_apply)(params, x, mask))


# ------------------------------------------------------------------------------ driver
def evaluate(fills, x, masks):
    return {f"{name}_{k}": missing_mse(fills[name][k], x, masks[k])
            for name in fills for k in MASKS}


def table(recs) -> str:
    final = [r for r in recs if r["phase"] == "final"]
    if not final:
        return "(no final records)"
    r0 = final[0]
    what = ""
    if r0.get("model") == "conv_decoder":
        c1, c2 = r0["channels"]
        what = (f"models/conv_decoder.pcg with {c1}, {c2} channels vs a BP conv autoencoder with "
                "the same decoder; ")
    rows = [(f"Missing-pixel MSE on {r0['n_test']} test images ({what}train {r0['n_train']} images, "
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
    ap.add_argument("--channels", type=int_list, default=None,
                    help="conv_decoder's c1,c2 (default the file's 32,16); the BP baseline is the "
                         "conv autoencoder with the same decoder")
    demo_args(ap, "inpaint")
    args = ap.parse_args()
    if print_table_only(args, table):
        return
    t0 = time.perf_counter()
    _, xtr, xva, xte = fmnist_splits(args.fraction, args.n_eval)
    mean = xtr.mean(axis=0)
    rng = np.random.default_rng(123)
    vmasks = {k: make_mask(k, len(xva), rng) for k in MASKS}
    tmasks = {k: make_mask(k, len(xte), rng) for k in MASKS}
    base = {"fraction": args.fraction, "epochs": args.epochs, "n_train": len(xtr),
            "n_val": len(xva), "n_test": len(xte), "model": args.model}
    model = ROOT / "models" / f"{args.model}.pcg"
    conv = args.model == "conv_decoder"
    chans = tuple(args.channels or (32, 16)) if conv else None
    params = {"c1": chans[0], "c2": chans[1]} if conv else None
    if conv:
        base["channels"] = list(chans)

    # selection on validation, seed 0
    net = train_pc(xtr, 0, args.epochs, model, params)
    vs = {}
    for T in args.steps_grid:
        vs[T] = np.mean([missing_mse(pc_fill(net, xva, vmasks[k], T), xva, vmasks[k])
                         for k in MASKS])
        append_jsonl(args.out, {**base, "phase": "select", "what": "pc_steps", "steps": T,
                                "val_mse": float(vs[T])})
    T = min(vs, key=vs.get)
    va = {}
    for lr in args.lrs:
        p = train_ae(xtr, 0, args.epochs, lr, channels=chans)
        va[lr] = np.mean([missing_mse(ae_fill(p, xva, vmasks[k], conv), xva, vmasks[k]) for k in MASKS])
        append_jsonl(args.out, {**base, "phase": "select", "what": "ae_lr", "lr": lr,
                                "val_mse": float(va[lr])})
    lr = min(va, key=va.get)
    print("selected", T, lr, vs, va, f"{time.perf_counter() - t0:.0f} s", flush=True)

    for s in args.seeds:
        net = net if s == 0 else train_pc(xtr, s, args.epochs, model, params)
        ae = train_ae(xtr, s, args.epochs, lr, channels=chans)
        fills = {"pc": {k: pc_fill(net, xte, tmasks[k], T) for k in MASKS},
                 "ae": {k: ae_fill(ae, xte, tmasks[k], conv) for k in MASKS},
                 "mean": {k: np.where(tmasks[k] == 1, xte, mean) for k in MASKS}}
        rec = {**base, "phase": "final", "seed": s, "steps": T, "ae_lr": lr,
               **evaluate(fills, xte, tmasks)}
        append_jsonl(args.out, rec)
        print(rec, f"{time.perf_counter() - t0:.0f} s", flush=True)
        if args.png and s == args.seeds[0]:
            draw(args.png, xte, tmasks, fills)
    print(table(read_jsonl(args.out)))


if __name__ == "__main__":
    main()
