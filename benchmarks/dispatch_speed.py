"""Training throughput with chunked dispatch: ``K = 1`` (one dispatch per step) against
``K = auto`` (``steps_per_dispatch = 0``), paired interleaved rounds of one epoch each.

The epoch runners are ``fit``'s own (``_divergence.EpochSteps`` and
``_chunked.ChunkedEpochSteps``, same step function, metrics fetched and checked as in ``fit``);
each round runs one epoch of each from the same starting state (order rotated) and the figure is
the median over rounds of the per-round throughput ratio auto / 1. Workloads:

* ``digits``: models/digits_mlp.pcg (64 → 64 → 64 → 10, T = 10), the digits training set, batch 64;
* ``mupc``: models/resnet_mupc.pcg at width 128, H = T = 16, batch 64, 2560 random examples
  (a step ~40× the digits MLP's).

    python benchmarks/dispatch_speed.py [--work digits mupc] [--rounds 15]

Records go to ``benchmarks/results/dispatch_speed.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import pcgraph  # noqa: E402
from pcgraph._binding import TrainData  # noqa: E402
from pcgraph._chunked import ChunkedEpochSteps, batch_bytes, steps_per_dispatch  # noqa: E402
from pcgraph._divergence import EpochSteps  # noqa: E402
from pcgraph import TrainState  # noqa: E402


def workload(name: str):
    if name == "digits":
        net = pcgraph.build(pcgraph.load(HERE.parent / "models" / "digits_mlp.pcg"), seed=0)
        return net, pcgraph.data.load("digits"), {}
    model = pcgraph.load(HERE.parent / "models" / "resnet_mupc.pcg",
                         params={"depth": 16, "width": 128})
    rng = np.random.default_rng(0)
    n = 2560
    data = {"x": rng.normal(size=(n, 784)).astype(np.float32),
            "y": np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]}
    return pcgraph.build(model, seed=0), data, {}


def runners(name: str):
    net, data, kw = workload(name)
    cfg = pcgraph.resolve_config(net.plan.settings, **kw)
    train = TrainData.of(net, data, "train", "test")
    spe = train.n_train // cfg.batch_size
    step = pcgraph.make_train_step(net, "train", inference=cfg.inference, init=cfg.init,
                                   weight_optimizer=cfg.weight_optimizer,
                                   record_node_energies=True)
    opt0 = step.init(net)
    first = next(iter(train.batches(cfg.batch_size, seed=0, epoch=0)))
    k = steps_per_dispatch(0, spe, batch_bytes(first))
    emit = lambda e: None  # noqa: E731
    out = {}
    for label, run in (("K=1", EpochSteps(step, None, 10, emit, spe)),
                       (f"K=auto ({k})", ChunkedEpochSteps(step, None, 10, emit, spe, k))):
        def epoch(run=run):
            st = TrainState(opt_state=opt0, carry=None)
            batches = train.batches(cfg.batch_size, seed=0, epoch=0)
            t = time.perf_counter()
            n, _ = run(net, st, batches, jax.random.PRNGKey(0))
            jax.block_until_ready(n)
            return time.perf_counter() - t

        epoch()  # compile
        out[label] = epoch
    return out, spe, k


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", nargs="+", default=["digits", "mupc"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(HERE / "results" / "dispatch_speed.jsonl"))
    args = ap.parse_args(argv)
    print(f"# dispatch_speed on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores, jax "
          f"{jax.__version__}; {args.rounds} paired rounds of one epoch each (shared machine)")
    print("| workload | steps/epoch | K | steps/s K=1 (median) | steps/s K=auto (median) | "
          "throughput ratio auto / 1 (median of per-round ratios) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.work:
        fns, spe, k = runners(name)
        (l1, f1), (la, fa) = fns.items()
        t1, ta = [], []
        for r in range(args.rounds):
            pair = [(f1, t1), (fa, ta)]
            for f, acc in (pair if r % 2 == 0 else pair[::-1]):
                acc.append(f())
        ratios = [a / b for a, b in zip(t1, ta)]
        rec = {"benchmark": "dispatch_speed", "work": name, "steps_per_epoch": spe, "k": k,
               "rounds": args.rounds, "steps_per_s_k1": spe / statistics.median(t1),
               "steps_per_s_auto": spe / statistics.median(ta),
               "ratio_median": statistics.median(ratios),
               "ratio_min": min(ratios), "ratio_max": max(ratios),
               "device": str(jax.devices()[0]), "jax": jax.__version__,
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        print(f"| {name} | {spe} | {k} | {rec['steps_per_s_k1']:.0f} | "
              f"{rec['steps_per_s_auto']:.0f} | {rec['ratio_median']:.2f} |", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
