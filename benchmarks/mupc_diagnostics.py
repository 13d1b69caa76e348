"""Deep-PCN diagnostics per depth, standard vs μPC (issue 6, DESIGN §5): activity-Hessian
condition number at initialisation and energy per layer after inference.

* **Hessian.** ``pcgraph.activity_hessian`` (``jax.hessian`` of F over the free activities of the
  train query, x and y clamped) at the forward-initialised activities of one Fashion-MNIST test
  image, width ``--hessian-width`` (small: the matrix is ``((H-1)·N)²``), float64;
  ``κ = max|λ| / min|λ|`` (``pcgraph.condition_number``).
* **Energy per layer.** One batch of ``--batch`` images, width ``--energy-width``, forward init,
  ``T = H`` GD activity steps (lr ``--activity-lr`` on the batch-mean energy, as in training);
  ``pcgraph.node_energies`` per node at the end. With forward init all the energy starts at the
  output; inference spreads it downwards. Reported: total F, the output's share, and the energy of
  the first hidden node relative to the output (PCX's imbalance).

Full protocol::

    python benchmarks/mupc_diagnostics.py --depths 8 16 32 64 128 --hessian-width 16 --energy-width 512

Reduced CPU run (docs/results.md)::

    python benchmarks/mupc_diagnostics.py --depths 8 16 32 64 128 --hessian-width 16 --energy-width 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import pcgraph  # noqa: E402
from pcgraph import node_energies  # noqa: E402
from pcgraph._energy import forward  # noqa: E402
from _common import save_figure  # noqa: E402
from mupc_depth import load_data, machine, resnet_mupc  # noqa: E402

PARAMS = ("standard", "mupc")


def forward_init(net, x, y):
    """Activities of the train query at the forward pass (x, y clamped)."""
    vals = {k: v for k, v in forward(net, {"x": x}).items()}
    vals["y"] = jnp.asarray(y)
    vals["x"] = jnp.asarray(x)
    return net.pack(vals)


def hessian_stats(depth: int, width: int, param: str, x, y) -> dict:
    net = pcgraph.build(resnet_mupc(depth, width, inputs=x.shape[1]), seed=0,
                        parameterisation=param, dtype=jnp.float64)
    q = pcgraph.compile_query(net, "train")
    h0 = forward_init(net, x, y)
    A = np.asarray(pcgraph.activity_hessian(net, q, h0))
    lam = np.abs(np.linalg.eigvalsh(A))
    finite = bool(np.all(np.isfinite(A)))
    return {"depth": depth, "param": param, "n": A.shape[0], "finite": finite,
            "lam_max": float(lam.max()) if finite else float("nan"),
            "lam_min": float(lam.min()) if finite else float("nan"),
            "cond": float(lam.max() / lam.min()) if finite else float("nan")}


def energy_profile(depth: int, width: int, param: str, x, y, activity_lr: float) -> dict:
    net = pcgraph.build(resnet_mupc(depth, width, inputs=x.shape[1]), seed=0,
                        parameterisation=param, dtype=jnp.float64)
    q = pcgraph.compile_query(net, "train")
    h0 = forward_init(net, x, y)
    E0 = node_energies(net, h0, q)
    res = pcgraph.infer(net, q, h0, pcgraph.GradientDescent(depth, optax.sgd(activity_lr),
                                                          activity_scale="batch"))
    E = node_energies(net, res.h, q)
    names = [f"h{i}" for i in range(1, depth)] + ["y"]
    e = np.array([float(E[n]) for n in names])
    tot = float(np.sum(e))
    return {"depth": depth, "param": param, "energy": e.tolist(), "F_start": float(sum(
        float(v) for v in E0.values())), "F_end": tot,
        "out_share": float(e[-1] / tot) if tot > 0 and np.isfinite(tot) else float("nan"),
        "first_over_out": float(e[0] / e[-1]) if e[-1] > 0 else float("nan")}


def plot(hs: list[dict], es: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    ax = axes[0]
    for param, style in zip(PARAMS, ("s--", "o-")):
        rs = sorted((r for r in hs if r["param"] == param), key=lambda r: r["depth"])
        ax.plot([r["depth"] for r in rs], [r["cond"] for r in rs], style, label=param)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("depth H")
    ax.set_ylabel("κ(∇²_h F) at init")
    ax.set_title("activity Hessian condition number")
    ax.legend(fontsize=8)
    for ax, param in zip(axes[1:], PARAMS):
        for r in sorted((r for r in es if r["param"] == param), key=lambda r: r["depth"]):
            e = np.asarray(r["energy"])
            ax.plot(np.arange(1, len(e) + 1) / len(e), np.maximum(e, 1e-30),
                    label=f"H={r['depth']}")
        ax.set_yscale("log")
        ax.set_xlabel("layer / H (output at 1)")
        ax.set_ylabel("energy E_l after T = H steps")
        ax.set_title(f"{param}: energy per layer")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--hessian-width", type=int, default=16)
    ap.add_argument("--energy-width", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--activity-lr", type=float, default=0.5)
    ap.add_argument("--png", default="docs/img/mupc_diagnostics.png")
    args = ap.parse_args(argv)

    ds = load_data()
    x1, y1 = ds.x_test[:1].astype(np.float64), ds.one_hot(ds.y_test[:1]).astype(np.float64)
    xb = ds.x_test[:args.batch].astype(np.float64)
    yb = ds.one_hot(ds.y_test[:args.batch]).astype(np.float64)
    print(f"# mupc_diagnostics on {machine()}; Hessian width {args.hessian_width} (batch 1), "
          f"energies width {args.energy_width} (batch {args.batch}, T = H, activity lr "
          f"{args.activity_lr}), float64, seed 0", flush=True)
    hs, es = [], []
    for H in args.depths:
        for param in PARAMS:
            hs.append(hessian_stats(H, args.hessian_width, param, x1, y1))
            es.append(energy_profile(H, args.energy_width, param, xb, yb, args.activity_lr))
            h, e = hs[-1], es[-1]
            print(f"  H {H:3d} {param:8s}: cond {h['cond']:.3e} (|λ| {h['lam_min']:.2e}..."
                  f"{h['lam_max']:.2e}, n={h['n']})  F {e['F_start']:.3e} -> {e['F_end']:.3e}, "
                  f"output share {e['out_share']:.3f}, E(h1)/E(y) {e['first_over_out']:.2e}",
                  flush=True)
    print()
    print("| H | param | κ(Hessian) at init | λ_min | λ_max | F at init | F after T=H | "
          "output's share of F | E(h1)/E(y) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for h, e in zip(hs, es):
        print(f"| {h['depth']} | {h['param']} | {h['cond']:.3g} | {h['lam_min']:.3g} | "
              f"{h['lam_max']:.3g} | {e['F_start']:.3g} | {e['F_end']:.3g} | "
              f"{e['out_share']:.3f} | {e['first_over_out']:.2g} |")
    if args.png:
        plot(hs, es, args.png)
        print(f"\nplot: {args.png}")


if __name__ == "__main__":
    main()
