"""μPC learning-rate transfer across width and depth (issue 6, seed 000's zero-shot transfer).

For each (depth H, width N) configuration, a grid of (Adam weight lr × GD activity lr) μPC runs of
``models/resnet_mupc.pcg`` on Fashion-MNIST (batch 64, T = H, forward init, batch-mean activity
gradient as JPC), each scored by **validation** accuracy (10 % of the training set, class-stratified,
split seed 0) after ``--iters`` iterations; test accuracy is reported at the validation argmax.
Prints one table per configuration and the argmax, says whether every argmax is the same or an adjacent grid point
(Chebyshev distance ≤ 1 on the grid), and saves the heat maps as one PNG.

Full protocol (GPU)::

    python benchmarks/mupc_transfer.py --configs 16:128 16:512 128:128 128:512 --iters 937

Reduced CPU run (docs/results.md)::

    python benchmarks/mupc_transfer.py --configs 8:32 8:128 32:32 32:128 --iters 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from mupc_depth import load_data, machine, train_run  # noqa: E402

WEIGHT_LRS = (0.025, 0.05, 0.1, 0.2, 0.4)
ACTIVITY_LRS = (0.5, 2.0, 8.0, 32.0)  # 32/64 per sample: near 2/λ_max


def grid(ds, H: int, N: int, wlrs, alrs, iters: int, batch: int, seed: int):
    """(validation accuracy, test accuracy) grids (%, a diverged run counts as chance)."""
    acc = np.full((len(wlrs), len(alrs)), np.nan)
    test = np.full_like(acc, np.nan)
    for i, wl in enumerate(wlrs):
        for j, al in enumerate(alrs):
            r = train_run(ds, method="mupc", depth=H, width=N, iters=iters, batch=batch,
                          weight_lr=wl, activity_lr=al, seed=seed)
            acc[i, j] = 10.0 if r["diverged"] else r["epochs"][-1]["val"]
            test[i, j] = 10.0 if r["diverged"] else r["acc"]
            print(f"    H={H} N={N} weight lr {wl:g} activity lr {al:g}: {acc[i, j]:.2f}%"
                  f" val{' (diverged)' if r['diverged'] else ''}  [{r['s_per_iter']:.3f} s/iter]",
                  flush=True)
    return acc, test


def argmax(acc: np.ndarray) -> tuple[int, int]:
    a = np.where(np.isfinite(acc), acc, -np.inf)
    return tuple(int(k) for k in np.unravel_index(np.argmax(a), a.shape))


def plot(results: dict, wlrs, alrs, path: str, iters: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys) + 1, 3.2), squeeze=False)
    for k, (ax, key) in enumerate(zip(axes[0], keys)):
        acc = results[key]
        im = ax.imshow(acc, origin="lower", cmap="viridis", vmin=10, vmax=max(90, np.nanmax(acc)))
        i, j = argmax(acc)
        ax.plot(j, i, "r*", ms=12)
        for (a, b), v in np.ndenumerate(acc):
            ax.text(b, a, f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="w" if v < 60 else "k")
        ax.set_xticks(range(len(alrs)), [f"{x:g}" for x in alrs], fontsize=7)
        ax.set_yticks(range(len(wlrs)), [f"{x:g}" for x in wlrs], fontsize=7)
        ax.set_xlabel("activity lr")
        if k == 0:
            ax.set_ylabel("Adam weight lr")
        ax.set_title(f"H={key[0]}, N={key[1]}", fontsize=9)
    fig.suptitle(f"μPC validation accuracy (%) after {iters} iterations, Fashion-MNIST", fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["16:128", "16:512", "128:128", "128:512"],
                    help="DEPTH:WIDTH pairs")
    ap.add_argument("--weight-lrs", type=float, nargs="+", default=list(WEIGHT_LRS))
    ap.add_argument("--activity-lrs", type=float, nargs="+", default=list(ACTIVITY_LRS))
    ap.add_argument("--iters", type=int, default=937, help="iterations per run (937 = 1 epoch)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the grids to this JSON file")
    ap.add_argument("--png", default="docs/img/mupc_transfer.png")
    ap.add_argument("--from-json", default=None, help="no training: report the grids of --json")
    args = ap.parse_args(argv)

    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        wl, al, args.iters = saved["weight_lrs"], saved["activity_lrs"], saved["iters"]
        results = {tuple(int(v) for v in k.split(":")): np.asarray(a, float)
                   for k, a in saved["val_grids"].items()}
        tests = {tuple(int(v) for v in k.split(":")): np.asarray(a, float)
                 for k, a in saved["test_grids"].items()}
        report(results, tests, wl, al, args)
        return
    ds = load_data()
    wl, al = args.weight_lrs, args.activity_lrs
    print(f"# mupc_transfer on {machine()}: {len(wl)}x{len(al)} grid, {args.iters} iterations of "
          f"batch {args.batch} per run ({args.iters * args.batch / len(ds.x_train):.2f} epochs)",
          flush=True)
    results, tests = {}, {}
    for c in args.configs:
        H, N = (int(v) for v in c.split(":"))
        results[(H, N)], tests[(H, N)] = grid(ds, H, N, wl, al, args.iters, args.batch,
                                              args.seed)
    report(results, tests, wl, al, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "iters": args.iters, "weight_lrs": wl,
                       "activity_lrs": al, "val_grids": {f"{H}:{N}": a.tolist()
                                                         for (H, N), a in results.items()},
                       "test_grids": {f"{H}:{N}": a.tolist() for (H, N), a in tests.items()}}, f)


def report(results: dict, tests: dict, wl, al, args) -> None:
    """The validation grids, their argmax and the test accuracy there."""
    print()
    best = {}
    for (H, N), acc in results.items():
        i, j = argmax(acc)
        best[(H, N)] = (i, j)
        print(f"H={H}, N={N}, validation accuracy % (rows: Adam weight lr, columns: activity lr)")
        print("| weight lr \\ activity lr | " + " | ".join(f"{a:g}" for a in al) + " |")
        print("| ---: |" + " ---: |" * len(al))
        for r, w in enumerate(wl):
            cells = [(f"**{v:.2f}**" if (r, k) == (i, j) else f"{v:.2f}")
                     for k, v in enumerate(acc[r])]
            print(f"| {w:g} | " + " | ".join(cells) + " |")
        print(f"argmax on validation: weight lr {wl[i]:g}, activity lr {al[j]:g} (val "
              f"{acc[i, j]:.2f}%, test there {tests[(H, N)][i, j]:.2f}%)\n")
    pts = list(best.values())
    dist = max(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a in pts for b in pts)
    verdict = "same grid point" if dist == 0 else ("adjacent grid points" if dist == 1 else
                                                     f"{dist} grid steps apart")
    print("best (weight lr, activity lr) per config: "
          + ", ".join(f"H={H},N={N}: ({wl[i]:g}, {al[j]:g})" for (H, N), (i, j) in best.items())
          + f" -> {verdict}")
    for (H, N), (i, j) in best.items():  # pairwise, to tell width from depth transfer
        for (H2, N2), (i2, j2) in best.items():
            if (H, N) < (H2, N2) and (H == H2 or N == N2):
                d = max(abs(i - i2), abs(j - j2))
                print(f"  H={H},N={N} vs H={H2},N={N2}: {d} grid step{'s' if d != 1 else ''}")
    if args.png:
        plot(results, wl, al, args.png, args.iters)
        print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
