"""μPC vs standard PC vs BP on Fashion-MNIST across depth (issue 6, DESIGN §4).

Model: ``models/resnet_mupc.pcg`` sized with ``pcgraph.load(..., params={"depth": H, "width": N})``:
``x -> h1`` (input layer), ``H - 2`` residual layers ``h{i-1} -> h{i} : dense(pre = relu) +
identity``, ``h{H-1} -> y`` (readout), no biases, gaussian (MSE) output, one-hot labels. ``L = H``
weight layers. Three ways of training the same graph:

* ``mupc``: μPC scalings computed from the graph (``a_1 = 1/√D``, ``a_l = 1/√(N·H)``,
  ``a_L = 1/N``, weights ``N(0, 1)``), PC with forward init, ``T = H`` plain-GD activity steps of
  lr 0.5 on the batch-mean energy (``activity_scale = "batch"``, JPC's convention), Adam on weights.
* ``standard``: the same graph, every scale 1, LeCun-normal weights, same PC settings and lrs.
* ``bp``: the μPC-parameterised network trained by backprop on the same MSE loss (Adam).

Batches of 64 drawn without replacement from a shuffled training set; 10 % of the training set is
held out for validation (class-stratified, split seed 0), and validation and test accuracy come from
the forward pass (the label is never clamped at test). The budget is ``--epochs`` or, when given,
``--iters`` training iterations per run.

The validation-selected protocol (docs/results.md): each method gets its own Adam learning-rate
grid (``--mupc-lrs``, ``--standard-lrs``, ``--bp-lrs``, the same size), run with ``--seed`` 0
(``--phase grid``); the learning rate and the evaluation point (every ``--eval-every``
iterations) with the best validation accuracy are chosen, and the chosen learning rate is run with
``--seeds`` (``--phase seeds``). Records append to ``benchmarks/results/mupc_depth.jsonl``;
``--table`` prints the table (test at the validation-chosen iteration and at the last one, paired
differences with 95 % CIs)::

    python benchmarks/mupc_depth.py --phase grid --depths 8 --iters 300 --eval-every 100
    python benchmarks/mupc_depth.py --phase seeds --depths 8 --iters 300 --eval-every 100
    python benchmarks/mupc_depth.py --table

Full protocol of issue 15 (width 128, 3 epochs × 3 seeds at H = 128)::

    python benchmarks/mupc_depth.py --phase grid --depths 8 16 32 64 128 --epochs 1 --eval-every 200
    python benchmarks/mupc_depth.py --phase seeds --depths 128 --epochs 3 --eval-every 843

The older single-setting mode (no ``--phase``: one weight lr for both PC methods, ``--json``,
``--from-json``) is kept for quick looks; it selects nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import pcgraph  # noqa: E402
from _common import save_figure  # noqa: E402
from pcgraph import make_train_step  # noqa: E402

MODEL = ROOT / "models" / "resnet_mupc.pcg"
METHODS = ("mupc", "standard", "bp")


def machine() -> str:
    dev = jax.devices()[0]
    return f"{dev.platform} ({getattr(dev, 'device_kind', '')}), {os.cpu_count()} CPU cores, jax {jax.__version__}"


def resnet_mupc(depth: int, width: int, inputs: int = 784, classes: int = 10):
    """The validated ``ModelIR`` of models/resnet_mupc.pcg at this size."""
    return pcgraph.load(MODEL, params={"depth": depth, "width": width, "inputs": inputs,
                                       "classes": classes})


def load_data(fraction: float = 1.0, name: str = "fashion-mnist", val_fraction: float = 0.1):
    """The data set with ``val_fraction`` of the training set held out for validation
    (class-stratified, split seed 0: the same for every run)."""
    return pcgraph.data.load(name, fraction=fraction, val_fraction=val_fraction, seed=0)


def build_net(method: str, depth: int, width: int, seed: int, inputs: int = 784):
    param = "standard" if method == "standard" else "mupc"
    return pcgraph.build(resnet_mupc(depth, width, inputs), seed=seed, parameterisation=param)


def make_step(net, method: str, depth: int, *, weight_lr: float, activity_lr: float,
              steps: int | None = None):
    """The jitted training step of one method (``bp`` or PC for ``mupc``/``standard``). The Adam
    learning rate lives in the optimiser state (``optax.inject_hyperparams``), so one compiled step
    serves every weight lr (:func:`set_weight_lr`)."""
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=weight_lr)
    if method == "bp":
        return make_train_step(net, "train", method="bp", weight_optimizer=opt)
    inference = pcgraph.GradientDescent(depth if steps is None else steps,
                                        optax.sgd(activity_lr), activity_scale="batch")
    return make_train_step(net, "train", method="pc", weight_optimizer=opt, inference=inference,
                           init=pcgraph.Initialisation("forward"))


def set_weight_lr(state, lr: float):
    hp = dict(state.hyperparams)
    hp["learning_rate"] = jnp.asarray(lr, hp["learning_rate"].dtype)
    return state._replace(hyperparams=hp)


_STEPS: dict = {}


def cached_steps(net, method: str, depth: int, width: int, activity_lr: float, steps):
    """(train step, evaluator) for this configuration, compiled once per process."""
    key = (method, depth, width, float(activity_lr), steps, net.plan.parameterisation)
    if key not in _STEPS:
        _STEPS[key] = (make_step(net, method, depth, weight_lr=0.0, activity_lr=activity_lr,
                                 steps=steps),
                       pcgraph.Evaluator(pcgraph.GradientDescent(),
                                         pcgraph.Initialisation("forward")))
    return _STEPS[key]


def test_accuracy(net, ds, evaluator, batch: int = 1000, split: str = "test") -> float:
    """Accuracy (%) of the forward pass on a split (``test`` or ``val``)."""
    return 100.0 * evaluator(net, ds, split=split, batch_size=batch)["accuracy"]


def batches(ds, batch: int, seed: int):
    """Endless batches: every epoch a fresh permutation, last partial batch dropped."""
    rng = np.random.default_rng(seed)
    n = len(ds.x_train)
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            idx = perm[i:i + batch]
            yield {"x": ds.x_train[idx], "y": ds.one_hot(ds.y_train[idx])}


def train_run(ds, *, method: str, depth: int, width: int, iters: int, batch: int = 64,
              weight_lr: float = 0.05, activity_lr: float = 0.5, seed: int = 0,
              eval_at: tuple[int, ...] = (), steps: int | None = None, verbose: bool = False) -> dict:
    """Train one network for ``iters`` iterations; returns accuracies, losses and timings.

    ``points``: validation and test accuracy at every iteration of ``eval_at`` and at the end
    (``epoch`` in fractions of an epoch, ``train_s`` and ``smm`` cumulative), from which the
    iteration is chosen on validation (``_evidence.chosen``). A run whose loss turns non-finite stops there (its accuracy is reported on the last finite
    network, which is what a NaN network would be replaced by: chance in practice)."""
    net = build_net(method, depth, width, seed, inputs=ds.x_train.shape[1])
    step, ev = cached_steps(net, method, depth, width, activity_lr, steps)
    state = set_weight_lr(step.init(net), weight_lr)
    it = batches(ds, batch, seed)
    losses, curve = [], []
    acc0 = test_accuracy(net, ds, ev)
    has_val = getattr(ds, "x_val", None) is not None
    smm = float(step.smm["smm_per_update"])
    points: list = []
    t_train = 0.0

    def point(done_, net_):
        val = test_accuracy(net_, ds, ev, split="val") if has_val else None
        points.append({"iter": done_, "epoch": done_ * batch / len(ds.x_train), "val": val,
                       "test": test_accuracy(net_, ds, ev), "train_s": t_train,
                       "smm": done_ * smm})
        return points[-1]["test"]

    t_compile = time.perf_counter()
    net, state, m = step(net, state, next(it))
    jax.block_until_ready(m["loss"])
    t_compile = time.perf_counter() - t_compile
    losses.append(float(m["loss"]))
    diverged = not math.isfinite(losses[-1])
    t0 = time.perf_counter()
    paused = 0.0
    done = 1
    eval_at = set(eval_at)
    while done < iters and not diverged:
        prev = net
        net, state, m = step(net, state, next(it))
        done += 1
        loss = float(m["loss"])
        losses.append(loss)
        if not math.isfinite(loss) or not math.isfinite(float(m["energy_end"])):
            diverged, net = True, prev
        if done in eval_at and done < iters:
            t_train = time.perf_counter() - t0 + t_compile - paused
            p0 = time.perf_counter()
            curve.append((done, point(done, net)))
            paused += time.perf_counter() - p0
            if verbose:
                print(f"    {method} H={depth} N={width} iter {done}: acc {curve[-1][1]:.2f} "
                      f"loss {np.mean(losses[-50:]):.4f}", flush=True)
    per_iter = (time.perf_counter() - t0 - paused) / max(done - 1, 1)
    t_train = time.perf_counter() - t0 + t_compile - paused
    acc = point(done, net)
    return {
        "method": method, "depth": depth, "width": width, "batch": batch, "iters": done,
        "epoch_budget": done * batch / len(ds.x_train), "weight_lr": weight_lr,
        "activity_lr": None if method == "bp" else activity_lr,
        "T": None if method == "bp" else (depth if steps is None else steps),
        "acc_init": acc0, "acc": acc, "diverged": diverged, "curve": curve,
        "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:])),
        "s_per_iter": per_iter, "compile_s": t_compile, "epochs": points,
        "smm_per_update": smm, "seed": seed,
    }


def table(rows: list[dict]) -> str:
    out = ["| width | H | method | iters (epochs) | test acc % | train loss first→last | s/iter |",
           "| ---: | ---: | --- | ---: | ---: | --- | ---: |"]
    for r in rows:
        flag = " (diverged)" if r["diverged"] else ""
        out.append(f"| {r['width']} | {r['depth']} | {r['method']} | {r['iters']} "
                   f"({r['epoch_budget']:.2f}) | {r['acc']:.2f}{flag} | {r['loss_first']:.3g}→"
                   f"{r['loss_last']:.3g} | {r['s_per_iter']:.3f} |")
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted({r["width"] for r in rows})
    fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.2), squeeze=False)
    for ax, w in zip(axes[0], widths):
        for method, style in zip(METHODS, ("o-", "s--", "^:")):
            rs = sorted((r for r in rows if r["width"] == w and r["method"] == method),
                        key=lambda r: r["depth"])
            if rs:
                ax.plot([r["depth"] for r in rs], [r["acc"] for r in rs], style, label=method)
        ax.axhline(10, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("depth H (weight layers)")
        ax.set_ylabel("test accuracy %")
        its = sorted({(r["depth"], r["iters"]) for r in rows
                      if r["width"] == w and r["method"] != "standard"})
        if len({i for _, i in its}) == 1:
            budget = f"{its[0][1]} iters"
        else:
            budget = "iters " + ", ".join(f"H{d}:{i}" for d, i in its)
        ax.set_title(f"Fashion-MNIST, width {w}\n{budget}", fontsize=9)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
    save_figure(fig, path)


# ------------------------------------------------------------------------------ selection on val
NAMES = {"mupc": "μPC", "standard": "standard PC", "bp": "BP"}
RESULTS = ROOT / "benchmarks" / "results" / "mupc_depth.jsonl"


def run_record(ds, args, method: str, depth: int, lr: float, seed: int, phase: str) -> dict:
    """One run of the validation-selected protocol, as a record of benchmarks/results."""
    ev = tuple(range(args.eval_every, args.iters + 1, args.eval_every)) if args.eval_every else ()
    r = train_run(ds, method=method, depth=depth, width=args.width, iters=args.iters,
                  batch=args.batch, weight_lr=lr, activity_lr=args.activity_lr, seed=seed,
                  eval_at=ev)
    pts = r.pop("epochs")
    print(f"  H {depth:3d} {method:8s} lr {lr:g} seed {seed}: val {pts[-1]['val']:.2f}% test "
          f"{pts[-1]['test']:.2f}%{' DIVERGED' if r['diverged'] else ''} "
          f"({r['s_per_iter']:.3f} s/iter)", flush=True)
    return {"bench": "mupc_depth", "phase": phase, "method": method, "depth": depth,
            "setting": {"weight_lr": lr}, "epochs": pts, "n_train": len(ds.x_train),
            "n_val": len(ds.x_val), "n_test": len(ds.x_test), **r, "machine": machine(),
            "command": " ".join(sys.argv)}


def lr_grid(args, method: str) -> list[float]:
    return {"mupc": args.mupc_lrs, "standard": args.standard_lrs, "bp": args.bp_lrs}[method]


def selection_table(records: list[dict]) -> str:
    """Per depth: every method's grid (validation-chosen iteration, test there), the selected
    learning rate repeated over seeds, and the paired differences."""
    from _evidence import by_seed, chosen, mean_sd, paired, select, verdict

    if not records:
        return "(no records)"
    r0 = records[0]
    out = [f"Width {r0['width']}, batch {r0['batch']}, T = H, activity lr {r0['activity_lr']}; "
           f"{r0['iters']} iterations ({r0['iters'] * r0['batch'] / r0['n_train']:.2f} epoch) "
           f"per run, validation {r0['n_val']} images, test {r0['n_test']}; {r0['machine']}.",
           "", "| H | method | Adam lr grid (val % at the val-chosen iteration) | selected | seeds "
           "| val % | test % at the val-chosen iteration | test % last | s/iter |",
           "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    diffs = []
    for H in sorted({r["depth"] for r in records}):
        tests = {}
        for m in METHODS:
            rs = [r for r in records if r["depth"] == H and r["method"] == m]
            g = [r for r in rs if r["phase"] == "grid"]
            if not g:
                continue
            setting, _ = select(g)
            cells = ", ".join(f"{r['setting']['weight_lr']:g}: {chosen(r)['val']:.1f}"
                              for r in sorted(g, key=lambda r: r["setting"]["weight_lr"]))
            runs = by_seed(rs, setting)
            cs = [chosen(r) for r in runs.values()]
            tests[m] = {s_: chosen(r)["test"] for s_, r in runs.items()}
            div = sum(r["diverged"] for r in runs.values())
            out.append(f"| {H} | {NAMES[m]} | {cells} | {setting['weight_lr']:g} | {len(runs)} | "
                       f"{mean_sd([c['val'] for c in cs])} | {mean_sd([c['test'] for c in cs])}"
                       f" | {mean_sd([c['last']['test'] for c in cs])}"
                       f"{f' ({div} diverged)' if div else ''} | "
                       f"{np.mean([r['s_per_iter'] for r in runs.values()]):.3f} |")
        for a, b in (("mupc", "bp"), ("mupc", "standard")):
            if a in tests and b in tests:
                diffs.append(f"- H = {H}: {verdict(NAMES[a], NAMES[b], *paired(tests[a], tests[b]))}")
    return "\n".join(out + ["", "Paired differences of test accuracy at the validation-chosen "
                                 "iteration:", ""] + diffs)


def run_selection(args) -> None:
    from _common import append_jsonl, read_jsonl
    from _evidence import by_seed, select

    ds = load_data(args.fraction)
    args.iters = args.iters or int(args.epochs * (len(ds.x_train) // args.batch))
    for H in args.depths:
        for m in args.methods:
            if args.phase == "grid":
                for lr in lr_grid(args, m):
                    append_jsonl(args.out, run_record(ds, args, m, H, lr, args.seed, "grid"))
            else:
                rs = [r for r in read_jsonl(args.out) if r["depth"] == H and r["method"] == m]
                setting, _ = select([r for r in rs if r["phase"] == "grid"])
                done = by_seed(rs, setting)
                for seed in args.seeds:
                    if seed not in done:
                        append_jsonl(args.out, run_record(ds, args, m, H, setting["weight_lr"],
                                                          seed, "seed"))
    print(selection_table(read_jsonl(args.out)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--depths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=1.0, help="budget in epochs (default 1)")
    ap.add_argument("--iters", type=int, default=None, help="budget in iterations (overrides --epochs)")
    ap.add_argument("--standard-iters", type=int, default=None,
                    help="a smaller budget for the standard parameterisation (default: the same)")
    ap.add_argument("--weight-lr", type=float, default=0.05, help="Adam lr for PC (seed: 0.05)")
    ap.add_argument("--activity-lr", type=float, default=0.5)
    ap.add_argument("--bp-lr", type=float, default=0.05, help="Adam lr for BP")
    ap.add_argument("--fraction", type=float, default=1.0, help="share of the training set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--json", default=None, help="append one JSON line per run to this file")
    ap.add_argument("--png", default="docs/img/mupc_depth.png")
    ap.add_argument("--from-json", default=None,
                    help="no training: tabulate and plot the runs saved by --json (several runs "
                         "of this script can append to one file)")
    ap.add_argument("--phase", choices=("grid", "seeds"), default=None,
                    help="validation-selected protocol: grid = every method's lr grid with "
                         "--seed; seeds = the selected lr of each method and depth with --seeds; "
                         "records to --out (benchmarks/results/mupc_depth.jsonl)")
    ap.add_argument("--width", type=int, default=128, help="with --phase")
    ap.add_argument("--mupc-lrs", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    ap.add_argument("--standard-lrs", type=float, nargs="+", default=[1e-3, 1e-2, 0.05])
    ap.add_argument("--bp-lrs", type=float, nargs="+", default=[1e-3, 5e-3, 0.05])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--table", action="store_true", help="print the selection table of --out")
    args = ap.parse_args(argv)
    if args.table:
        from _common import read_jsonl

        print(selection_table(read_jsonl(args.out)))
        return
    if args.phase:
        run_selection(args)
        return
    if args.from_json:
        with open(args.from_json) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        print(f"# {len(rows)} runs from {args.from_json} ({rows[0]['machine'] if rows else ''})")
        print(table(rows))
        if args.png:
            plot(rows, args.png)
            print(f"\nplot: {args.png}")
        return

    ds = load_data(args.fraction)
    n_iter = args.iters or int(args.epochs * (len(ds.x_train) // args.batch))
    print(f"# mupc_depth on {machine()}: {ds}, batch {args.batch}, budget {n_iter} iterations "
          f"({n_iter * args.batch / len(ds.x_train):.2f} epochs)", flush=True)
    rows = []
    for w in args.widths:
        for H in args.depths:
            for method in args.methods:
                iters = n_iter
                if method == "standard" and args.standard_iters:
                    iters = min(n_iter, args.standard_iters)
                ev = tuple(range(args.eval_every, iters + 1, args.eval_every)) if args.eval_every else ()
                lr = args.bp_lr if method == "bp" else args.weight_lr
                r = train_run(ds, method=method, depth=H, width=w, iters=iters, batch=args.batch,
                              weight_lr=lr, activity_lr=args.activity_lr, seed=args.seed,
                              eval_at=ev, verbose=bool(ev))
                rows.append(r)
                print(f"  width {w} H {H:3d} {method:8s}: acc {r['acc']:.2f}% "
                      f"(init {r['acc_init']:.1f}) loss {r['loss_first']:.3g}->{r['loss_last']:.3g}"
                      f"{' DIVERGED' if r['diverged'] else ''}  {r['s_per_iter']:.3f} s/iter",
                      flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps({**r, "machine": machine()}) + "\n")
    print()
    print(table(rows))
    if args.png:
        plot(rows, args.png)
        print(f"\nplot: {args.png}")


if __name__ == "__main__":
    main()
