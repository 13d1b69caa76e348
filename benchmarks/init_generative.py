"""Seed 004 §5.2: a generative decoder 64 → 256 → 256 → 784 on Fashion-MNIST.

``models/decoder.pcg``: z -> h1 -> h2 -> img (tanh hidden, sigmoid image, gaussian prior on z).
Training clamps only the image (no forward pass exists: z is an unclamped root, Prop. 3.2). At
test the image is clamped, the free nodes are relaxed for T steps from the initialisation, and the
reconstruction is the forward pass from the relaxed z (the ``generate`` query); the error is the
per-pixel mean squared error against the image (pixels in [0, 1]). T_train = T_eval = T.

Methods: ``mem`` (seed 004's setup: one memory for the bottleneck z keyed on the image, a forward
pass from it for h1, h2 — ``mem_forward``), ``mem-all`` (a memory on every free node), ``zero``,
``random`` (N(0, 1)). A PNG grid (--png) shows test images and their reconstructions at the
smallest T.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from _common import (D, ROOT, Timer, append_jsonl, build, carry_of, int_list, load_model, machine,
                     make_eval_step, make_train_step, optax, print_table_only, read_jsonl,
                     save_figure, str_list)


def _method(name: str, args):
    mem = {"mem_patterns": args.patterns, "mem_delta": args.delta, "mem_heads": args.heads,
           "mem_embed": args.embed, "learned_lr": args.learned_lr}
    if name == "mem":
        return "mem", {"mem_forward": True, **mem}
    if name == "mem-all":
        return "mem", mem
    if name == "random":
        return "random", {"random_mean": 0.0, "random_std": 1.0}
    return name, {}


def reconstruct(infer_fn, gen_fn, net, x, batch_size, carry):
    """(per-pixel MSE over x, reconstructions of the first batch)."""
    errs, first = [], None
    for xb, _, mask in D.eval_batches(x, np.zeros(len(x), np.int32), batch_size):
        z = infer_fn(net, {"img": xb}, None, carry=carry)["z"]
        rec = gen_fn(net, {"z": z})["img"]
        e = np.asarray(jnp.mean((rec - xb) ** 2, axis=-1))
        errs.append(e[mask])
        if first is None:
            first = np.asarray(rec)
    return float(np.mean(np.concatenate(errs))), first


def run_one(args, ds, name: str, T: int, seed: int, xtr, ytr) -> tuple[dict, np.ndarray]:
    model = load_model(str(ROOT / "models" / "decoder.pcg"))
    net = build(model, seed=seed)
    method, opts = _method(name, args)
    wopt = optax.adamw(args.weight_lr, weight_decay=args.weight_decay)
    step = make_train_step(net, "train", weight_optimizer=wopt, steps=T,
                           activity_lr=args.activity_lr, init=method, init_options=opts)
    infer_fn = make_eval_step(net, "infer", steps=T, activity_lr=args.eval_activity_lr,
                              init=method, init_options=opts)
    gen_fn = make_eval_step(net, "generate", init="forward")  # z clamped: the forward pass
    opt_state = step.init(net, batch_size=args.batch)
    key = jax.random.PRNGKey(seed)
    n, times, curve = 0, [], []
    for epoch in range(args.epochs):
        with Timer() as t:
            for xb, _ in D.batches(xtr, ytr, args.batch, seed=seed, epoch=epoch):
                net, opt_state, met = step(net, opt_state, {"img": xb},
                                           jax.random.fold_in(key, n))
                n += 1
            jax.block_until_ready(net)
        times.append(t.s)
        err, rec = reconstruct(infer_fn, gen_fn, net, ds.x_test[: args.test_n], 500,
                               carry_of(opt_state))
        curve.append(err)
        print(f"  {name:8s} T={T:3d} seed={seed} epoch {epoch + 1}: test recon MSE {err:.5f} "
              f"({t.s:.1f} s)", flush=True)
    return ({"method": name, "T": T, "seed": seed, "epochs": args.epochs, "mse": curve,
             "final": curve[-1], "best": min(curve), "train_s": float(np.sum(times)), "steps": n,
             "smm_per_update": step.smm["smm_pc"], "init_methods": dict(step.initialiser.methods),
             "train_n": len(xtr), "test_n": min(args.test_n, len(ds.x_test)),
             "weight_lr": args.weight_lr, "activity_lr": args.activity_lr,
             "eval_activity_lr": args.eval_activity_lr, "machine": machine()}, rec)


def table(records):
    rows = {}
    for r in records:
        rows.setdefault((r["method"], r["T"]), []).append(r)
    Ts = sorted({k[1] for k in rows})
    methods = [m for m in ("mem", "mem-all", "zero", "random") if any(k[0] == m for k in rows)]
    lines = ["| init | " + " | ".join(f"T = {t}" for t in Ts) + " |",
             "| --- |" + " --- |" * len(Ts)]
    for m in methods:
        cells = []
        for t in Ts:
            rs = rows.get((m, t))
            cells.append("–" if not rs else f"{np.mean([r['final'] for r in rs]):.4f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_png(path, originals, recs: dict, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = originals.shape[0]
    rows = [("image", originals)] + list(recs.items())
    fig, axes = plt.subplots(len(rows), k, figsize=(k * 0.9, len(rows) * 1.0))
    for i, (name, imgs) in enumerate(rows):
        for j in range(k):
            ax = axes[i, j]
            ax.imshow(np.clip(imgs[j].reshape(28, 28), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="mem,zero,random", type=str_list)
    p.add_argument("--steps", type=int_list, default=[3, 5, 10, 20])
    p.add_argument("--seeds", type=int_list, default=[0])
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--test-n", type=int, default=10000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--weight-lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--activity-lr", type=float, default=0.1)
    p.add_argument("--eval-activity-lr", type=float, default=0.1)
    p.add_argument("--patterns", type=int, default=24)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--embed", type=int, default=8, help="per head (16 x 8 = seed 004's 128)")
    p.add_argument("--learned-lr", type=float, default=1e-3)
    p.add_argument("--delta", type=float, default=200.0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/init_generative.jsonl")
    p.add_argument("--png", default="runs/init_generative.png")
    p.add_argument("--table", action="store_true")
    args = p.parse_args(argv)
    if print_table_only(args, table):
        return 0
    ds = D.load("fashion-mnist", data_dir=args.data_dir, normalize="unit")
    xtr, ytr = ds.x_train, ds.y_train
    if args.fraction < 1:
        idx = D.stratified_indices(ytr, args.fraction, np.random.default_rng([0, 2]))
        xtr, ytr = xtr[idx], ytr[idx]
    print(machine(), flush=True)
    t0 = time.perf_counter()
    recs = {}
    for seed in args.seeds:
        for T in args.steps:
            for name in args.methods:
                rec, imgs = run_one(args, ds, name, T, seed, xtr, ytr)
                append_jsonl(args.out, rec)
                if T == min(args.steps) and seed == args.seeds[0]:
                    recs[f"{name} T={T}"] = imgs[:10]
    if args.png and recs:
        grid_png(args.png, ds.x_test[:10], recs,
                 f"decoder reconstructions (T_train = T_eval = {min(args.steps)})")
        print(f"wrote {args.png}")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    print(table(read_jsonl(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
