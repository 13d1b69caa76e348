"""Seed 004 §5.2: a generative decoder 64 → 256 → 256 → 784 on Fashion-MNIST.

``models/decoder.pcg``: z -> h1 -> h2 -> img (tanh hidden, sigmoid image). Training clamps only
the image (no forward pass exists: z is an unclamped root, Prop. 3.2). At test the image is
clamped, the free nodes are relaxed for T steps from the initialisation, and the reconstruction is
the forward pass from the relaxed z (the ``generate`` query); the error is the per-pixel mean
squared error against the image (pixels in [0, 1]). T_train = T_eval = T.

Seed 004's decoder has no prior on its bottleneck, so by default (``--prior 0``) the benchmark
drops the model file's gaussian(0, 1) prior on z; ``--prior 1`` keeps it. (With the prior, three
steps from a memory shrink z towards 0 every batch and mem at T = 3 stops improving after one
epoch: docs/results.md.) ``--act`` swaps the hidden activation (seed 004 searched gelu, tanh,
leaky_relu). Every epoch is evaluated with each ``--eval-activity-lr`` on a validation split (10 %
of the training set, class-stratified, split seed 0) and on the test set; the table picks the
α_eval and the epoch on **validation** (α_eval: the lowest best-epoch validation error averaged
over seeds; epoch: each run's lowest validation error at that α_eval) and reports the test error
there and at the last epoch. Records: ``benchmarks/results/init_generative.jsonl``.

Methods: ``mem`` (seed 004's setup: one memory for the bottleneck z keyed on the image, a forward
pass from it for h1, h2 — ``mem_forward``), ``mem-all`` (a memory on every free node), ``zero``,
``random`` (N(0, 1)). ``--png`` draws the first 10 test images and, per (method, T), the
reconstructions of the best record in ``--out``; ``--table --png F`` redraws it without training.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax.numpy as jnp
import numpy as np

import pcgraph  # noqa: E402 - after _common, which puts the repository on sys.path
from _common import (D, ROOT, append_jsonl, build, float_list, int_list, load_model, machine,
                     mean_sd, optax, print_table_only, read_jsonl, save_figure, str_list)

from pcgraph import make_eval_step, make_train_step


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


def run_one(args, ds, name: str, T: int, seed: int, xtr, ytr) -> dict:
    net = build(load_model(decoder_text(args.act, args.prior)), seed=seed)
    method, opts = _method(name, args)

    def config(activity_lr):
        return pcgraph.resolve_config(
            net.plan.settings, steps=T, activity_lr=activity_lr, init=method, init_options=opts,
            epochs=args.epochs, batch_size=args.batch,
            weight_optimizer=optax.adamw(args.weight_lr, weight_decay=args.weight_decay))

    cfg = config(args.activity_lr)
    infer_fns = {str(a): make_eval_step(net, "infer", inference=config(a).inference,
                                        init=cfg.init) for a in args.eval_activity_lr}
    # z clamped: the forward pass
    gen_fn = make_eval_step(net, "generate", init=pcgraph.Initialisation("forward"))
    times, curves, recs = [], {a: [] for a in infer_fns}, {}
    vcurves = {a: [] for a in infer_fns}

    def on_epoch(e):  # the reconstruction (forward pass from the relaxed z), every α_eval
        if e["kind"] != "epoch":
            return
        net_, carry, t = e["net"], e["state"].carry, e["metrics"]["epoch_time_s"]
        times.append(t)
        for a, infer_fn in infer_fns.items():
            err, recs[a] = reconstruct(infer_fn, gen_fn, net_, ds.x_test[: args.test_n], 500,
                                       carry)
            curves[a].append(err)
            vcurves[a].append(reconstruct(infer_fn, gen_fn, net_, ds.x_val[: args.test_n], 500,
                                          carry)[0])
        errs = "  ".join(f"{curves[a][-1]:.5f}" for a in curves)
        verrs = "  ".join(f"{vcurves[a][-1]:.5f}" for a in vcurves)
        print(f"  {name:8s} T={T:3d} seed={seed} epoch {e['epoch']}: val recon MSE {verrs}, "
              f"test {errs} (α_eval {', '.join(map(str, curves))}; {t:.1f} s)", flush=True)

    res = pcgraph.fit(net, {"img": xtr}, cfg, seed=seed, callback=on_epoch, eval_data=False,
                      trace_inference=False)
    a_best = best_eval_lr([vcurves])
    curve = curves[a_best]
    chosen_epoch = int(np.argmin(vcurves[a_best]))
    init_methods = make_train_step(net, "train", inference=cfg.inference,
                                   init=cfg.init).initialiser.methods
    return ({"method": name, "T": T, "seed": seed, "epochs": args.epochs, "mse": curve,
             "final": curve[-1], "val_chosen": float(vcurves[a_best][chosen_epoch]),
             "test_at_val": float(curve[chosen_epoch]), "mse_val_by_eval_lr": vcurves,
             "train_s": float(np.sum(times)), "steps": res.state.step,
             "smm_per_update": res.smm_per_batch, "init_methods": dict(init_methods),
             "train_n": len(xtr), "test_n": min(args.test_n, len(ds.x_test)),
             "weight_lr": args.weight_lr, "activity_lr": args.activity_lr,
             "eval_activity_lr": float(a_best), "mse_by_eval_lr": curves,
             "act": args.act, "prior": args.prior, "learned_lr": args.learned_lr,
             "recon10": np.round(recs[a_best][:10], 3).tolist(), "machine": machine()})


def decoder_text(act: str, prior: bool) -> str:
    """``models/decoder.pcg`` with its hidden activation replaced, and with (``prior = True``) or
    without a gaussian(0, 1) prior on z. Seed 004's decoder has none (its h0 has no energy term)."""
    text = (ROOT / "models" / "decoder.pcg").read_text()
    z = "node z: [64] prior = gaussian(0, 1)"
    if z not in text or "act = tanh" not in text:
        raise SystemExit(f"models/decoder.pcg no longer has '{z}' and 'act = tanh'; update decoder_text")
    bare = text.replace("act = tanh", f"act = {act}").replace(z, "node z: [64]")
    return bare.replace("node z: [64]", "node z: [64] prior = gaussian(0, 1)") if prior else bare


def _settings(r) -> str:
    """The training hyper-parameters of a record, as a table label (older records lack some)."""
    return (f"β {r.get('weight_lr', 5e-4):g}, α_train {r.get('activity_lr', 0.1):g}, "
            f"{r.get('act', 'tanh')}" + ("" if r.get("prior", 1) else ", no prior"))


def _curves(r, split: str = "test") -> dict[str, list[float]]:
    """MSE curve per evaluation step α_eval on ``split`` (val or test)."""
    return r["mse_val_by_eval_lr"] if split == "val" else r["mse_by_eval_lr"]


def best_eval_lr(curve_sets: list[dict[str, list[float]]]) -> str:
    """The evaluation step chosen on validation curves: the α_eval (present in every run) whose
    best-epoch validation error, averaged over the runs, is lowest."""
    lrs = sorted(set.intersection(*(set(c) for c in curve_sets)), key=float)
    return min(lrs, key=lambda a: np.mean([min(c[a]) for c in curve_sets]))


def _cell(rs) -> str:
    """Test error at the validation-chosen α_eval and epoch (mean ± sd over seeds), the last
    epoch's in brackets."""
    a = best_eval_lr([_curves(r, "val") for r in rs])
    at = [_curves(r)[a][int(np.argmin(_curves(r, "val")[a]))] for r in rs]
    last = np.mean([_curves(r)[a][-1] for r in rs])
    return f"{mean_sd(at, 4)} (last {last:.4f}) α_eval {a}"


def table(records):
    """One row per method and training settings (β, α_train, activation, prior), one column per T:
    test MSE at the validation-chosen α_eval and epoch, mean ± sd over seeds, the last epoch's in
    brackets."""
    rows = {}
    for r in records:
        rows.setdefault((r["method"], _settings(r)), {}).setdefault(r["T"], []).append(r)
    Ts = sorted({r["T"] for r in records})
    order = ("mem", "mem-all", "zero", "random")
    lines = ["| init | settings | seeds | " + " | ".join(f"T = {t}" for t in Ts) + " |",
             "| --- | --- | --- |" + " --- |" * len(Ts)]
    for (m, st), byT in sorted(rows.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        seeds = max(len(rs) for rs in byT.values())
        cells = [_cell(byT[t]) if t in byT else "–" for t in Ts]
        lines.append(f"| {m} | {st} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_png(path, originals, records):
    """Test images and, per (method, T), the reconstructions of the record with the lowest
    validation error (records that stored them: ``recon10``, the first 10 test images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = {}
    for r in records:
        k = (r["method"], r["T"])
        if "recon10" in r and (k not in best or r["val_chosen"] < best[k]["val_chosen"]):
            best[k] = r
    rows = [("image", originals)] + [(f"{m} T={t}", np.asarray(best[m, t]["recon10"]))
                                     for m, t in sorted(best)]
    k = originals.shape[0]
    fig, axes = plt.subplots(len(rows), k, figsize=(k * 0.9, len(rows) * 1.0), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j in range(k):
            ax = axes[i, j]
            ax.imshow(np.clip(imgs[j].reshape(28, 28), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("decoder reconstructions, T_train = T_eval = T", fontsize=9)
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
    p.add_argument("--eval-activity-lr", type=float_list, default=[0.1],
                   help="one or more; every epoch is evaluated with each on validation, the "
                        "choice is reported")
    p.add_argument("--act", default="tanh", help="hidden activation (seed 004: gelu, tanh, leaky_relu)")
    p.add_argument("--prior", type=int, default=0, help="1: a gaussian(0, 1) prior on z; 0: none")
    p.add_argument("--patterns", type=int, default=24)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--embed", type=int, default=8, help="per head (16 x 8 = seed 004's 128)")
    p.add_argument("--learned-lr", type=float, default=1e-3)
    p.add_argument("--delta", type=float, default=200.0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "init_generative.jsonl"))
    p.add_argument("--png", default="runs/init_generative.png",
                   help="grid of reconstructions from every record of --out that stored them ('' = none)")
    p.add_argument("--table", action="store_true", help="print the table (and --png) of --out, train nothing")
    args = p.parse_args(argv)
    if args.table and args.png:
        x_test = D.load("fashion-mnist", data_dir=args.data_dir, normalize="unit").x_test
        grid_png(args.png, x_test[:10], read_jsonl(args.out))
    if print_table_only(args, table):
        return 0
    ds = D.load("fashion-mnist", data_dir=args.data_dir, normalize="unit", val_fraction=0.1,
                seed=0)
    xtr, ytr = ds.x_train, ds.y_train
    if args.fraction < 1:
        idx = D.stratified_indices(ytr, args.fraction, np.random.default_rng([0, 2]))
        xtr, ytr = xtr[idx], ytr[idx]
    print(machine(), flush=True)
    t0 = time.perf_counter()
    for seed in args.seeds:
        for T in args.steps:
            for name in args.methods:
                append_jsonl(args.out, run_one(args, ds, name, T, seed, xtr, ytr))
    if args.png:
        grid_png(args.png, ds.x_test[:10], read_jsonl(args.out))
        print(f"wrote {args.png}")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    print(table(read_jsonl(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
