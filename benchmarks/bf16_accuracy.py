"""Fashion-MNIST MLP accuracy and CPU speed at ``precision = fp32`` and ``bf16``.

``models/mlp_fmnist.pcg`` (784 → W ×4 → 10, GELU, categorical output, the model's settings:
T = 5, activity lr 0.1, Adam 1e-3, batch 64), 3 epochs, several seeds, the same seed and batch
order for both precisions; test accuracy after the last epoch (no selection: fixed settings and
epochs, nothing chosen on the test set) and the mean ms per training step of the last epoch.

    python benchmarks/bf16_accuracy.py [--width 128] [--seeds 0 1 2] [--epochs 3]

Records go to ``benchmarks/results/bf16_accuracy.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import jax  # noqa: E402

import pcgraph  # noqa: E402
from _common import ci95  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--out", default=str(HERE / "results" / "bf16_accuracy.jsonl"))
    args = ap.parse_args(argv)
    ds = pcgraph.data.load("fashion-mnist", fraction=args.fraction)
    model = pcgraph.load(HERE.parent / "models" / "mlp_fmnist.pcg", params={"width": args.width})
    rows = {"fp32": [], "bf16": []}
    for seed in args.seeds:
        for prec in ("fp32", "bf16"):
            t = time.perf_counter()
            res = pcgraph.fit(pcgraph.build(model, seed=seed), ds, epochs=args.epochs,
                              seed=seed, precision=prec, trace_inference=False)
            f = res.final
            rec = {"benchmark": "bf16_accuracy", "precision": prec, "seed": seed,
                   "width": args.width, "epochs": args.epochs, "fraction": args.fraction,
                   "test_accuracy": 100 * f["test_accuracy"], "ms_per_step": f["ms_per_step"],
                   "steps_per_dispatch": res.config["steps_per_dispatch"],
                   "wall_s": time.perf_counter() - t, "device": str(jax.devices()[0]),
                   "jax": jax.__version__,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            rows[prec].append(rec)
            print(json.dumps(rec), flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
    print(f"| precision | test accuracy % (mean ± sd, 95 % CI, n = {len(args.seeds)}) | "
          "ms / step (median) |")
    print("| --- | ---: | ---: |")
    for prec, rs in rows.items():
        acc = [r["test_accuracy"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"| {prec} | {statistics.mean(acc):.2f} ± {sd:.2f} (± {ci95(acc):.2f}) | "
              f"{statistics.median(r['ms_per_step'] for r in rs):.2f} |")
    diff = [a["test_accuracy"] - b["test_accuracy"] for a, b in zip(rows["bf16"], rows["fp32"])]
    print(f"paired difference bf16 − fp32: {statistics.mean(diff):+.2f} points "
          f"(per seed: {', '.join(f'{d:+.2f}' for d in diff)})")


if __name__ == "__main__":
    main()
