"""How many Hessian-vector products λ_min of a deep μPC network's activity Hessian takes (issue 18).

``hessian_spectrum(..., method="lanczos")`` (λ_min as σ − λ_max(σI − H), σ = λ_max) against
ARPACK's ``which="SA"`` on H directly, on ``models/resnet_mupc.pcg`` at the given depth and width,
a seeded random batch (standard-normal inputs, random one-hot labels) at forward initialisation.
Records go to ``benchmarks/results/hessian_lanczos.jsonl``; the dense eigenvalues are added when
the system is small enough (``--dense-max``).

    nice -n 10 python benchmarks/hessian_lanczos.py --depth 32 --width 128 --batch 1 --tols 1e-6,1e-4 --sa
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import ROOT, append_jsonl, float_list, machine

import pcgraph
from pcgraph import build, compile_query, hessian_operator, hessian_spectrum
from pcgraph._energy import forward_acts, topological_order
from pcgraph._infer import clamp_data


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ncv", type=int, default=64)
    p.add_argument("--tols", type=float_list, default=[1e-6, 1e-4])
    p.add_argument("--maxiter", type=int, default=300)
    p.add_argument("--sa", action="store_true", help="also eigsh(which='SA') on H directly")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/hessian_lanczos.jsonl"))
    a = p.parse_args()
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    net = build(pcgraph.load(str(ROOT / "models/resnet_mupc.pcg"),
                             params={"depth": a.depth, "width": a.width}), seed=a.seed)
    q = compile_query(net, "train")
    rng = np.random.default_rng(a.seed)
    data = {"x": rng.standard_normal((a.batch, 784)).astype(np.float32),
            "y": np.eye(10, dtype=np.float32)[rng.integers(0, 10, a.batch)]}
    h = forward_acts(net, clamp_data(net, q, data), topological_order(net, q.clamp))
    base = {"depth": a.depth, "width": a.width, "batch": a.batch, "seed": a.seed, "ncv": a.ncv,
            "maxiter": a.maxiter, "machine": machine()}
    for tol in a.tols:
        t0 = time.perf_counter()
        s = hessian_spectrum(net, q, h, method="lanczos", tol=tol, ncv=a.ncv, maxiter=a.maxiter)
        r = {**base, "method": "shifted", "tol": tol, **s.as_dict(),
             "wall_s": time.perf_counter() - t0}
        print(r, flush=True)
        append_jsonl(a.out, r)
    if a.sa:
        op, count = hessian_operator(net, q, h)
        t0 = time.perf_counter()
        try:
            lam = float(eigsh(op, k=1, which="SA", tol=min(a.tols), ncv=a.ncv, maxiter=a.maxiter,
                              v0=np.random.default_rng(0).standard_normal(op.shape[0]),
                              return_eigenvectors=False)[0])
            ok = True
        except ArpackNoConvergence:
            lam, ok = float("nan"), False
        r = {**base, "method": "SA on H", "tol": min(a.tols), "lambda_min": lam, "converged": ok,
             "matvecs": count[0], "wall_s": time.perf_counter() - t0}
        print(r, flush=True)
        append_jsonl(a.out, r)


if __name__ == "__main__":
    main()
