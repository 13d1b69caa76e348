"""Seed 004, Table 1 / Fig. 3 on Fashion-MNIST: BP vs PC with each initialisation, selected on
validation.

A 5-layer MLP (784 → 512 ×4 → 10, gelu on the target, categorical output), batch 200, AdamW on the
weights (weight decay 1e-4), plain SGD on the activities. Methods:

* ``bp``                                  — backprop on the same DAG; grid: ``--bp-weight-lrs``
* ``forward``, ``avg`` (T ∈ ``--t-fast``) — avg is the hybrid of eq. 10 (forward for the first
  m = ⌊L/2⌋+1 layers, class means for the rest) on class-balanced batches, tested with forward
* ``zero``, ``random``, ``null`` (T ∈ ``--t-slow``)

PC grid: ``--pc-weight-lrs`` × ``--activity-lrs`` × T. Both grids are printed with the table; give
them the same size (a warning otherwise).

Data: Fashion-MNIST, 10 % of the training set held out for validation (class-stratified, split
seed 0, the same for every run), ``--fraction`` of the rest kept (stratified, per seed), the full
10k test set. After every epoch the run records validation and test accuracy (forward pass, label
never clamped), training time and cumulative SMMs.

``--phase grid``: every setting of every method with seed ``--grid-seed``. ``--phase seeds``: per
method, the setting whose validation accuracy (at its best-validation epoch) is highest among the
grid runs, repeated with every seed of ``--seeds`` not yet recorded. The epoch of each run is chosen
on validation; test is reported at that epoch and at the last one. Records append to
``benchmarks/results/init_compare.jsonl``; ``python benchmarks/report.py`` writes the tables into
docs/results.md; ``--table`` prints them.

Protocol of seed 004: ``--epochs 16 --fraction 1``. The run in docs/results.md is reduced (see
there for the exact commands).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

import pcgraph  # noqa: E402 - after _common, which puts the repository on sys.path
from _common import (ROOT, D, append_jsonl, build, float_list, int_list, load_model, machine,
                     optax, read_jsonl, str_list)
from _evidence import by_seed, chosen, fmt_setting, key_of, mean_sd, paired, select, verdict

MODEL = """
model mlp_fmnist {{
  param width = {width}
  settings {{ parameterisation = standard; steps = 5; activity_lr = {alr}; init = auto }}
  node x: [784]
  node h1, h2, h3, h4: [width]  act = {act}
  node y: [10]                  energy = categorical
  x -> h1 -> h2 -> h3 -> h4 -> y : dense
  query train {{ clamp x, y }}
  query test  {{ clamp x; read y }}
}}
"""
NAMES = {"bp": "BP", "forward": "PC-forward", "avg": "PC-avg", "zero": "PC-zero",
         "random": "PC-random", "null": "PC-null"}
ORDER = list(NAMES)


def grid(args, method: str) -> list[dict]:
    """The settings of ``method`` this run tries."""
    if method == "bp":
        return [{"weight_lr": w} for w in args.bp_weight_lrs]
    ts = args.t_fast if method in ("forward", "avg") else args.t_slow
    return [{"weight_lr": w, "activity_lr": a, "T": t}
            for t in ts for w in args.pc_weight_lrs for a in args.activity_lrs]


def load_splits(fraction: float, seed: int):
    """The data set: the validation split is fixed (split seed 0); the kept training fraction
    depends on ``seed``."""
    ds = D.load("fashion-mnist", val_fraction=0.1, seed=0)
    if fraction < 1:
        idx = D.stratified_indices(ds.y_train, fraction, np.random.default_rng([seed, 2]))
        ds = dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx])
    return ds


def run_one(args, method: str, setting: dict, seed: int, phase: str) -> dict:
    ds = load_splits(args.fraction, seed)
    T, alr = setting.get("T"), setting.get("activity_lr", 0.1)
    net = build(load_model(MODEL.format(width=args.width, alr=alr, act=args.act)), seed=seed)
    opts = {"avg_hybrid": True, "avg_m": args.avg_m} if method == "avg" else {}
    if method == "random":
        opts = {"random_mean": 0.0, "random_std": args.random_std}
    config = pcgraph.resolve_config(
        net.plan.settings, algorithm="bp" if method == "bp" else "pc", steps=T,
        init=None if method == "bp" else method, init_options=opts, epochs=args.epochs,
        batch_size=args.batch,
        weight_optimizer=optax.adamw(setting["weight_lr"], weight_decay=args.weight_decay))
    points, smm, t_last = [], [0], [time.perf_counter()]

    def on_event(e):
        if e["kind"] == "start":
            smm[0] = _number(e["smm_per_update"])
        if e["kind"] != "epoch":
            return
        m = e["metrics"]
        points.append({"epoch": m["epoch"], "val": 100 * m["val_accuracy"],
                       "test": 100 * m["test_accuracy"], "train_s": m["epoch_time_s"],
                       "smm": m["step"] * smm[0], "steps": m["step"], "finite": True})
        print(f"  {method:8s} {fmt_setting(setting)} seed={seed} epoch {m['epoch']}: "
              f"val {points[-1]['val']:.2f}% test {points[-1]['test']:.2f}% "
              f"({m['epoch_time_s']:.1f} s)", flush=True)
        t_last[0] = time.perf_counter()

    try:  # tested with the forward pass (the equilibrium of the test query), label never clamped
        pcgraph.fit(net, ds, config, seed=seed, callback=on_event, eval_batch_size=1000,
                    train_eval_max=0, trace_inference=False, eval_init=pcgraph.Initialisation())
    except pcgraph.TrainingDiverged as err:  # the diverged epoch is recorded, training stops
        points.append({"epoch": err.epoch, "val": float("nan"), "test": float("nan"),
                       "train_s": time.perf_counter() - t_last[0], "smm": err.step * smm[0],
                       "steps": err.step, "finite": False})
    return {"bench": "init_compare", "phase": phase, "method": method, "setting": setting,
            "seed": seed, "fraction": args.fraction, "n_train": len(ds.x_train),
            "n_val": len(ds.x_val), "n_test": len(ds.x_test), "epochs_budget": args.epochs,
            "batch": args.batch, "width": args.width, "act": args.act,
            "weight_decay": args.weight_decay, "avg_m": args.avg_m, "smm_per_update": smm[0],
            "epochs": points, "train_s": float(sum(p["train_s"] for p in points)),
            "machine": machine(), "command": " ".join(sys.argv)}


def _number(x: float):
    """An integral float as an int (as the records have always stored SMM counts)."""
    return int(x) if float(x).is_integer() else float(x)


# ------------------------------------------------------------------------------ tables
def epoch_s(run: dict) -> float:
    """Training seconds per epoch, the first epoch (compilation) left out where there are more."""
    ts = [p["train_s"] for p in run["epochs"]]
    return float(np.mean(ts[1:] if len(ts) > 1 else ts))


def _cell(values, digits=2):
    return mean_sd(values, digits)


def grid_table(records: list[dict]) -> str:
    """Every grid run: the setting, its validation-chosen epoch and accuracies."""
    rs = [r for r in records if r["phase"] == "grid"]
    methods = [m for m in ORDER if any(r["method"] == m for r in rs)]
    sizes = ", ".join(f"{NAMES[m]} {len({key_of(r['setting']) for r in rs if r['method'] == m})}"
                      for m in methods)
    lines = [f"Grid (seed {rs[0]['seed'] if rs else '–'}; settings per method: {sizes}); "
             "**selected** = best validation accuracy of the method:", "",
             "| method | setting | val % (chosen epoch) | test % at it | test % last epoch |",
             "| --- | --- | ---: | ---: | ---: |"]
    for m in methods:
        ms = [r for r in rs if r["method"] == m]
        best = key_of(select(ms)[0])
        for r in sorted(ms, key=lambda r: key_of(r["setting"])):
            c = chosen(r)
            b = "**" if key_of(r["setting"]) == best else ""
            lines.append(f"| {NAMES[m]} | {b}{fmt_setting(r['setting'])}{b} | {c['val']:.2f} "
                         f"({c['epoch']:g}) | {c['test']:.2f} | {c['last']['test']:.2f} |")
    return "\n".join(lines)


def selected_runs(records: list[dict]) -> dict[str, dict[int, dict]]:
    """Per method: the seeds' runs of the setting selected on the grid."""
    out = {}
    for m in ORDER:
        g = [r for r in records if r["method"] == m and r["phase"] == "grid"]
        if g:
            out[m] = by_seed([r for r in records if r["method"] == m], select(g)[0])
    return out


def seeds_table(records: list[dict]) -> str:
    sel = selected_runs(records)
    lines = ["| method | selected setting | seeds | val % (chosen epochs) | test % at the "
             "val-chosen epoch | test % last epoch | SMM/update | train s/epoch (after the 1st) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, runs in sel.items():
        cs = [chosen(r) for r in runs.values()]
        r0 = next(iter(runs.values()))
        s_ep = np.mean([epoch_s(r) for r in runs.values()])
        eps = ", ".join(f"{c['epoch']:g}" for c in cs)
        lines.append(f"| {NAMES[m]} | {fmt_setting(r0['setting'])} | {len(runs)} | "
                     f"{_cell([c['val'] for c in cs])} ({eps})"
                     f" | {_cell([c['test'] for c in cs])} | "
                     f"{_cell([c['last']['test'] for c in cs])} | {r0['smm_per_update']} | "
                     f"{s_ep:.1f} |")
    return "\n".join(lines)


def diff_lines(records: list[dict]) -> str:
    sel = selected_runs(records)
    tests = {m: {s: chosen(r)["test"] for s, r in runs.items()} for m, runs in sel.items()}
    pairs = [(a, b) for a, b in (("forward", "bp"), ("avg", "bp"), ("avg", "forward"),
                                 ("zero", "forward"), ("random", "forward"), ("null", "forward"))
             if a in tests and b in tests]
    out = ["Paired differences of test accuracy at the validation-chosen epoch (same seeds):", ""]
    out += [f"- {verdict(NAMES[a], NAMES[b], *paired(tests[a], tests[b]))}" for a, b in pairs]
    times = {m: {s: epoch_s(r) for s, r in runs.items()}
             for m, runs in sel.items()}
    if "avg" in times and "forward" in times:
        d, h, n = paired(times["avg"], times["forward"])
        base = np.mean(list(times["forward"].values()))
        out.append(f"- training time per epoch: {verdict('PC-avg', 'PC-forward', d, h, n, 's')}"
                   f" ({100 * d / base:+.0f} % of PC-forward's {base:.1f} s; wall time on a "
                   "shared 2-core CPU)")
    return "\n".join(out)


def smm_table(records: list[dict]) -> str:
    """SMMs each selected method needs to first reach PC-forward's validation-selected accuracy
    (mean over its seeds) on validation, at epoch granularity (seed 004 Fig. 3)."""
    sel = selected_runs(records)
    if "forward" not in sel:
        return ""
    target = float(np.mean([chosen(r)["val"] for r in sel["forward"].values()]))
    lines = [f"SMMs to first reach PC-forward's validation-selected accuracy ({target:.2f} % on "
             "validation, mean of its seeds), checked after every epoch:", "",
             "| method | per seed: SMMs (epoch) | seeds reaching it |", "| --- | --- | ---: |"]
    for m, runs in sel.items():
        cells, hit = [], 0
        for s, r in sorted(runs.items()):
            p = next((p for p in r["epochs"] if p["val"] >= target), None)
            cells.append(f"s{s}: {p['smm']:,} ({p['epoch']:g})" if p else f"s{s}: not reached")
            hit += p is not None
        lines.append(f"| {NAMES[m]} | {'; '.join(cells)} | {hit}/{len(runs)} |")
    return "\n".join(lines)


def table(records: list[dict]) -> str:
    if not records:
        return "(no records)"
    r0 = records[0]
    head = (f"Budget: {r0['epochs_budget']} epochs on {r0['fraction']:g} of the training split "
            f"({r0['n_train']} images, batch {r0['batch']}), validation {r0['n_val']} images, "
            f"test {r0['n_test']}; {r0['machine']}.")
    return "\n\n".join(x for x in (head, grid_table(records), seeds_table(records),
                                   diff_lines(records), smm_table(records)) if x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=("grid", "seeds"), default="grid")
    p.add_argument("--methods", default=["bp", "forward", "avg"], type=str_list)
    p.add_argument("--t-fast", type=int_list, default=[5])
    p.add_argument("--t-slow", type=int_list, default=[25, 100])
    p.add_argument("--bp-weight-lrs", type=float_list, default=[1e-4, 3e-4, 1e-3, 3e-3])
    p.add_argument("--pc-weight-lrs", type=float_list, default=[3e-4, 1e-3])
    p.add_argument("--activity-lrs", type=float_list, default=[0.03, 0.1])
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--grid-seed", type=int, default=0)
    p.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--act", default="gelu")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--random-std", type=float, default=1.0)
    p.add_argument("--avg-m", type=int, default=None, help="hybrid avg: forward for depth ≤ m")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "init_compare.jsonl"))
    p.add_argument("--table", action="store_true", help="print the tables of --out and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table(read_jsonl(args.out)))
        return 0
    sizes = {m: len(grid(args, m)) for m in args.methods}
    print(f"{machine()}; grid sizes {sizes}", flush=True)
    if len(set(sizes.values())) > 1:
        print(f"warning: grids of different sizes {sizes}", flush=True)
    t0 = time.perf_counter()
    if args.phase == "grid":
        for m in args.methods:
            for s in grid(args, m):
                append_jsonl(args.out, run_one(args, m, s, args.grid_seed, "grid"))
    else:
        records = read_jsonl(args.out)
        for m in args.methods:
            g = [r for r in records if r["method"] == m and r["phase"] == "grid"]
            setting = select(g)[0]
            done = by_seed([r for r in records if r["method"] == m], setting)
            for seed in args.seeds:
                if seed not in done:
                    append_jsonl(args.out, run_one(args, m, setting, seed, "seed"))
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    print(table(read_jsonl(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
