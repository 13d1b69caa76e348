"""How reproducible are the tutorials' figures? (issue 19)

Runs the generative tutorial's decoder ``mem`` figure (Python, pixels in [0, 1], one epoch on 10 %
of Fashion-MNIST) and the hybrid tutorial's ``auto`` figure at T = 0 and T = 20, each in a fresh
process, under several environments: the same command twice, one XLA CPU thread, and other seeds.
Each run appends one JSON line to ``benchmarks/results/reproducibility.jsonl``.

    python benchmarks/reproducibility.py --run            # the runs (a few minutes on 2 cores)
    python benchmarks/reproducibility.py --table          # the table docs/results.md quotes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "reproducibility.jsonl"

CHILD = r"""
import json, os, sys
import jax
import pcgraph
from pcgraph import data
seed = int(sys.argv[1])
ds = data.load("fashion-mnist", fraction=0.1, normalize="unit", seed=0)
r = pcgraph.fit(pcgraph.build(pcgraph.load("models/decoder.pcg"), seed=seed), ds, epochs=1,
                init="mem", steps=3, seed=seed)
dec = float(r.final["test_mse"])
ds = data.load("fashion-mnist", fraction=0.1, seed=0)
model = pcgraph.load("models/hybrid.pcg")
r = pcgraph.fit(pcgraph.build(model, seed=seed), ds, epochs=1, activity_lr=0.05, init="auto",
                seed=seed)
cfgs = {T: pcgraph.resolve_config(model.settings, steps=T, activity_lr=0.05, init="auto")
        for T in (0, 20)}
hyb = {T: float(pcgraph.evaluate(r.net, ds, inference=c.inference, init=c.init,
                                 carry=r.state.carry)["mse"]) for T, c in cfgs.items()}
print(json.dumps({"decoder_mem_T3": dec, "hybrid_auto_T0": hyb[0], "hybrid_auto_T20": hyb[20]}))
"""

VARIANTS = {
    "default": {},
    "default-again": {},
    "one-thread": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                                "intra_op_parallelism_threads=1"},
}


def run(seeds, variants) -> None:
    import jax

    for seed in seeds:
        for name in variants:
            env = {**os.environ, **VARIANTS[name], "PYTHONPATH": str(ROOT)}
            p = subprocess.run([sys.executable, "-c", CHILD, str(seed)], cwd=ROOT, env=env,
                               capture_output=True, text=True, check=True)
            rec = {"seed": seed, "variant": name, **json.loads(p.stdout.strip().splitlines()[-1]),
                   "jax": jax.__version__, "cpus": os.cpu_count(),
                   "xla_flags": VARIANTS[name].get("XLA_FLAGS", "")}
            with open(OUT, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(rec, flush=True)


def table() -> str:
    import statistics as st

    recs = [json.loads(s) for s in OUT.read_text().splitlines() if s.strip()]
    keys = ("decoder_mem_T3", "hybrid_auto_T0", "hybrid_auto_T20")
    lines = ["| seed | environment | decoder `mem`, T = 3 | hybrid `auto`, T = 0 | hybrid `auto`, T = 20 |",
             "| --- | --- | --- | --- | --- |"]
    for r in recs:
        lines.append(f"| {r['seed']} | {r['variant']} | " + " | ".join(f"{r[k]:.5f}" for k in keys)
                     + " |")
    firsts = {}
    for r in recs:
        firsts.setdefault(r["seed"], r)
    if len(firsts) >= 2:
        cells = []
        for k in keys:
            v = [r[k] for r in firsts.values()]
            cells.append(f"{st.mean(v):.4f} ± {st.stdev(v):.4f}")
        lines.append(f"| mean ± sd over {len(firsts)} seeds | default | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--variants", default="default,default-again,one-thread")
    a = ap.parse_args()
    if a.run:
        run([int(s) for s in a.seeds.split(",")], a.variants.split(","))
    if a.table:
        print(table())
