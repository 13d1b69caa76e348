"""Seed 001/002's landscape claims, measured on CPU (issue 18).

Seed 002 (theory of the equilibrated energy): for a deep linear network the PC energy at the
inference equilibrium is a rescaled MSE, F*(θ) = (1/2B) Σ rᵀ S⁻¹ r with S = I + Σ_l P_l P_lᵀ, and
the origin — a non-strict saddle of the MSE for three or more weight layers — is a strict saddle of
F* (negative curvature), so PC should escape it where BP stalls. Seed 001 (PC as a trust-region
method): PC's effective landscape is robust to vanishing gradients. Three experiments:

* ``escape``: deep linear chains x -> h1 -> ... -> y (identity activations, no biases, all widths
  = ``--width``), toy regression y = M x (B = 64 Gaussian inputs, M with N(0, 1/d) entries),
  weights N(0, σ²) near the origin. PC = gradient descent on F*(θ) (``pcgraph`` 's
  ``chain_equilibrated_energy``: PC with exact inference, by the envelope theorem — a test checks
  it); BP = gradient descent on the MSE (``bp_loss``). Same lr for both. "Escape" = the first
  iteration at which the network's MSE is below half its initial value (censored at ``--iters``).
* ``hessian``: the Hessians of F* and of the MSE with respect to all weights at the origin
  (θ = 0), exactly (``jax.hessian``): smallest and largest eigenvalue, number of negative ones.
* ``vanishing``: deep tanh MLPs (width ``--width-nl``, standard parameterisation, weights
  N(0, g²/fan_in)); at initialisation, the norm of the BP gradient ∂L/∂θ and of the PC weight update
  ∂F/∂θ at the relaxed activities (forward init, GD inference to ‖∇F‖ < 1e-6), per layer, and their
  cosine. With the same weight learning rate these norms are the step sizes each takes.

    python benchmarks/theory_landscape.py --out benchmarks/results/theory_landscape.jsonl
    python benchmarks/theory_landscape.py --table --png docs/img/theory_landscape.png

Records (one JSON line each) carry ``experiment`` and everything needed for the table.
"""

from __future__ import annotations

import argparse
import math
import time

import equinox as eqx
import jax
import numpy as np
import optax
from _common import ROOT, append_jsonl, int_list, machine, mean_sd, read_jsonl, save_figure
from jax.flatten_util import ravel_pytree

from pcgraph import (GradientDescent, bp_loss, build, chain_equilibrated_energy, compile_query,
                     energy, infer, load, update_alignment)
from pcgraph._energy import forward_acts, topological_order
from pcgraph._infer import clamp_data


def chain_text(depth: int, width: int, act: str = "identity") -> str:
    """``depth`` weight layers, every node ``width`` wide."""
    hidden = " ".join(f"node h{i}: [{width}] act = {act}" for i in range(1, depth))
    path = " -> ".join(["x"] + [f"h{i}" for i in range(1, depth)] + ["y"])
    return (f"model chain {{ node x: [{width}] {hidden} node y: [{width}] "
            f"{path} : dense(bias = false) query train {{ clamp x, y }} "
            f"query test {{ clamp x; read y }} }}").replace(" node", "\n node")


def toy_data(width: int, seed: int, n: int = 64):
    rng = np.random.default_rng(1000 + seed)
    x = rng.standard_normal((n, width))
    M = rng.standard_normal((width, width)) / math.sqrt(width)
    return {"x": x.astype(np.float64), "y": (x @ M.T).astype(np.float64)}


def _scaled(net, std_of, key):
    """The network with every weight array redrawn as N(0, std_of(array)²)."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    leaves, tdef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    new = [std_of(a) * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(tdef, new), static)


_JIT: dict = {}  # compiled functions by (experiment, shape...): seeds only change the data


# ------------------------------------------------------------------------------ escape
def escape(depth, width, seed, sigma, lr, iters):
    net = build(load(chain_text(depth, width)), seed=seed)
    net = _scaled(net, lambda a: sigma, jax.random.PRNGKey(seed))
    q = compile_query(net, "train")
    data = toy_data(width, seed)
    out = []
    for algo, obj in (("pc", chain_equilibrated_energy), ("bp", bp_loss)):
        params, static = eqx.partition(net, eqx.is_inexact_array)
        key = ("escape", depth, width, algo, lr, iters)
        if key not in _JIT:  # one compilation for every seed
            def run(params, data, static=static, obj=obj):
                def body(p, _):
                    n = eqx.combine(p, static)
                    val, g = jax.value_and_grad(
                        lambda pp: obj(eqx.combine(pp, static), q, data))(p)
                    return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), (
                        bp_loss(n, q, data), val)

                return jax.lax.scan(body, params, None, length=iters)[1]

            _JIT[key] = jax.jit(run)
        run = lambda params: _JIT[key](params, data)  # noqa: E731
        t0 = time.perf_counter()
        mse, val = (np.asarray(a) for a in run(params))
        below = np.nonzero(mse < 0.5 * mse[0])[0]
        obj_below = np.nonzero(val < 0.5 * val[0])[0]
        out.append({"experiment": "escape", "algorithm": algo, "depth": depth, "width": width,
                    "seed": seed, "sigma": sigma, "lr": lr, "iters": iters,
                    "escape_iter": int(below[0]) if len(below) else None,
                    "objective_escape_iter": int(obj_below[0]) if len(obj_below) else None,
                    "mse_start": float(mse[0]), "mse_end": float(mse[-1]),
                    "objective_start": float(val[0]), "objective_end": float(val[-1]),
                    "mse_curve": [float(v) for v in mse[:: max(1, iters // 200)]],
                    "objective_curve": [float(v) for v in val[:: max(1, iters // 200)]],
                    "seconds": time.perf_counter() - t0})
    return out


# ------------------------------------------------------------------------------ hessian
def hessian_at_origin(depth, width, seed):
    net = build(load(chain_text(depth, width)), seed=0)
    net = _scaled(net, lambda a: 0.0, jax.random.PRNGKey(0))
    q = compile_query(net, "train")
    data = toy_data(width, seed)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    out = []
    for name, obj in (("pc", chain_equilibrated_energy), ("bp", bp_loss)):
        key = ("hessian", depth, width, name)
        if key not in _JIT:
            _JIT[key] = jax.jit(jax.hessian(
                lambda v, data, obj=obj: obj(eqx.combine(unravel(v), static), q, data)))
        H = _JIT[key](flat, data)
        lam = np.linalg.eigvalsh(np.asarray(H, dtype=np.float64))
        tol = 1e-9 * max(1.0, float(np.abs(lam).max()))
        out.append({"experiment": "hessian", "objective": "F*" if name == "pc" else "MSE",
                    "algorithm": name, "depth": depth, "width": width, "seed": seed,
                    "n_params": int(flat.size), "lambda_min": float(lam[0]),
                    "lambda_max": float(lam[-1]), "n_negative": int(np.sum(lam < -tol)),
                    "n_zero": int(np.sum(np.abs(lam) <= tol))})
    return out


# ------------------------------------------------------------------------------ vanishing
def vanishing(depth, width, seed, gain, d_io=16):
    text = chain_text(depth, width, "tanh").replace(f"node x: [{width}]", f"node x: [{d_io}]")
    text = text.replace(f"node y: [{width}]", f"node y: [{d_io}]")
    net = build(load(text), seed=seed)
    net = _scaled(net, lambda a: gain / math.sqrt(a.shape[-2] if a.ndim >= 2 else 1),
                  jax.random.PRNGKey(seed))
    q = compile_query(net, "train")
    data = toy_data(d_io, seed)
    h = clamp_data(net, q, data)
    h0 = forward_acts(net, h, topological_order(net, q.clamp))
    res = infer(net, q, h0, GradientDescent(steps=20000, optimizer=optax.sgd(0.2), tol=1e-6))
    al = update_alignment(net, q, data, res.h)
    g_pc = eqx.filter_grad(lambda n: energy(n, res.h, q))(net)
    g_bp = eqx.filter_grad(lambda n: bp_loss(n, q, data))(net)

    def norms(g):
        return {t: float(np.linalg.norm(ravel_pytree(g.term_params(t))[0]))
                for t in net.term_names()}

    pc, bp = norms(g_pc), norms(g_bp)
    first, last = net.term_names()[0], net.term_names()[-1]
    return [{"experiment": "vanishing", "depth": depth, "width": width, "gain": gain,
             "seed": seed, "inference_steps": int(res.steps), "converged": bool(res.converged),
             "pc_norm": al.pc_norm, "bp_norm": al.bp_norm, "cosine": al.cosine,
             "pc_first": pc[first], "bp_first": bp[first], "pc_last": pc[last],
             "bp_last": bp[last], "pc_per_layer": list(pc.values()),
             "bp_per_layer": list(bp.values())}]


# ------------------------------------------------------------------------------ report
def _group(records, exp, *keys):
    out = {}
    for r in records:
        if r.get("experiment") == exp:
            out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _esc(rs, key="escape_iter"):
    v = [r.get(key) for r in rs]
    cap = rs[0]["iters"]
    if all(x is None for x in v):
        return f"> {cap} (none of {len(v)})"
    if any(x is None for x in v):
        done = [x for x in v if x is not None]
        return f"{mean_sd(done, 0)} ({len(done)}/{len(v)} escaped; rest > {cap})"
    return mean_sd(v, 0)


def table(records) -> str:
    lines = ["**Saddle escape** (deep linear chain, GD iterations until the network's MSE halves, "
             "and until PC's own objective F* halves; mean ± sd over seeds)", "",
             "| depth | width | σ | lr | PC: MSE halves | BP: MSE halves | PC: F* halves | "
             "MSE at the end, PC | MSE at the end, BP | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    g = _group(records, "escape", "depth", "width", "sigma", "lr", "algorithm")
    for (d, w, s, lr) in sorted({k[:4] for k in g}):
        pc, bp = g.get((d, w, s, lr, "pc"), []), g.get((d, w, s, lr, "bp"), [])
        if not pc or not bp:
            continue
        lines.append(f"| {d} | {w} | {s:g} | {lr:g} | {_esc(pc)} | {_esc(bp)} | "
                     f"{_esc(pc, 'objective_escape_iter')} | "
                     f"{mean_sd([r['mse_end'] for r in pc], 3)} | "
                     f"{mean_sd([r['mse_end'] for r in bp], 3)} | {len(pc)} |")
    lines += ["", "**Hessian at the origin** (all weights 0; eigenvalues of the Hessian w.r.t. "
              "the weights; same for every data seed up to the values shown)", "",
              "| depth | params | F*: λ_min | F*: # negative | MSE: λ_min | MSE: # negative | "
              "MSE: # zero |", "|---|---|---|---|---|---|---|"]
    g = _group(records, "hessian", "depth", "objective")
    for d in sorted({k[0] for k in g}):
        f, m = g.get((d, "F*"), []), g.get((d, "MSE"), [])
        if not f or not m:
            continue
        lines.append(
            f"| {d} | {f[0]['n_params']} | {mean_sd([r['lambda_min'] for r in f], 3)} | "
            f"{mean_sd([r['n_negative'] for r in f], 1)} | "
            f"{mean_sd([r['lambda_min'] for r in m], 3)} | "
            f"{mean_sd([r['n_negative'] for r in m], 1)} | {mean_sd([r['n_zero'] for r in m], 1)} |")
    lines += ["", "**Vanishing gradients** (tanh MLP at init; norms of the weight gradients, "
              "first layer and all layers; PC at the relaxed activities)", "",
              "| gain | depth | ‖BP‖ first | ‖PC‖ first | PC/BP first | ‖BP‖ all | ‖PC‖ all | "
              "cos(PC, BP) |", "|---|---|---|---|---|---|---|---|"]
    g = _group(records, "vanishing", "gain", "depth")
    for (gain, d) in sorted(g):
        rs = g[(gain, d)]

        def ms(key, rs=rs):
            v = np.array([r[key] for r in rs])
            return f"{v.mean():.2e}" + (f" ± {v.std(ddof=1):.1e}" if len(v) > 1 else "")

        ratio = [r["pc_first"] / r["bp_first"] for r in rs]
        lines.append(f"| {gain:g} | {d} | {ms('bp_first')} | {ms('pc_first')} | "
                     f"{mean_sd(ratio, 3)} | {ms('bp_norm')} | {ms('pc_norm')} | "
                     f"{mean_sd([r['cosine'] for r in rs], 3)} |")
    return "\n".join(lines)


def figure(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    g = _group(records, "escape", "algorithm", "depth")
    for algo, c in (("pc", "C0"), ("bp", "C3")):
        ds = sorted(d for a, d in g if a == algo)
        cap = max(r["iters"] for rs in g.values() for r in rs)
        m = [np.mean([r["escape_iter"] if r["escape_iter"] is not None else cap
                      for r in g[(algo, d)]]) for d in ds]
        ax[0].plot(ds, m, "o-", color=c, label="PC (F*)" if algo == "pc" else "BP (MSE)")
    ds = sorted(d for a, d in g if a == "pc")
    ax[0].plot(ds, [np.mean([r.get("objective_escape_iter") or cap for r in g[("pc", d)]])
                    for d in ds], "o--", color="C0", label="PC: F* halves")
    ax[0].axhline(cap, ls=":", color="gray", label="cap (not escaped)")
    ax[0].set(xscale="log", yscale="log", xlabel="depth (weight layers)",
              ylabel="iterations until MSE halves", title="escape from near the origin")
    ax[0].legend(fontsize=8)
    g = _group(records, "hessian", "objective", "depth")
    for obj, c in (("F*", "C0"), ("MSE", "C3")):
        ds = sorted(d for o, d in g if o == obj)
        ax[1].plot(ds, [np.mean([r["lambda_min"] for r in g[(obj, d)]]) for d in ds], "o-",
                   color=c, label=obj)
    ax[1].axhline(0, color="gray", lw=0.5)
    ax[1].set(xscale="log", xlabel="depth", ylabel="λ_min of the weight Hessian at θ = 0",
              title="curvature at the origin saddle")
    ax[1].legend(fontsize=8)
    g = _group(records, "vanishing", "gain", "depth")
    for gain, ls in zip(sorted({k[0] for k in g}), ("-", "--", ":")):
        ds = sorted(d for gg, d in g if gg == gain)
        for key, c, lab in (("bp_first", "C3", "BP"), ("pc_first", "C0", "PC")):
            ax[2].plot(ds, [np.mean([r[key] for r in g[(gain, d)]]) for d in ds], "o" + ls,
                       color=c, label=f"{lab}, gain {gain:g}")
    ax[2].set(xscale="log", yscale="log", xlabel="depth", ylabel="first-layer update norm",
              title="tanh MLP at init: step size vs depth")
    ax[2].legend(fontsize=8)
    for a in ax:
        a.set_xticks([2, 4, 8, 16, 32], ["2", "4", "8", "16", "32"])
        a.minorticks_off()
    fig.tight_layout()
    save_figure(fig, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiments", default="escape,hessian,vanishing")
    p.add_argument("--depths", type=int_list, default=[2, 4, 8, 16])
    p.add_argument("--hessian-depths", type=int_list, default=[2, 3, 4, 8, 16])
    p.add_argument("--nl-depths", type=int_list, default=[2, 4, 8, 16, 32])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--hessian-width", type=int, default=4)
    p.add_argument("--width-nl", type=int, default=32)
    p.add_argument("--gains", default="0.5,1.0")
    p.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--iters", type=int, default=4000)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/theory_landscape.jsonl"))
    p.add_argument("--table", action="store_true", help="print the table of --out and stop")
    p.add_argument("--png", default="", help="draw the figure from --out")
    args = p.parse_args()
    jax.config.update("jax_enable_x64", True)
    if args.table or args.png:
        recs = read_jsonl(args.out)
        if args.png:
            figure(recs, args.png)
        print(table(recs))
        return
    exps = args.experiments.split(",")
    env = {"machine": machine()}
    for s in args.seeds:
        if "hessian" in exps:
            for d in args.hessian_depths:
                for r in hessian_at_origin(d, args.hessian_width, s):
                    append_jsonl(args.out, {**r, **env})
                    print(r)
        if "escape" in exps:
            for d in args.depths:
                for r in escape(d, args.width, s, args.sigma, args.lr, args.iters):
                    append_jsonl(args.out, {**r, **env})
                    print({k: v for k, v in r.items() if k != "mse_curve"})
        if "vanishing" in exps:
            for gain in [float(g) for g in args.gains.split(",")]:
                for d in args.nl_depths:
                    for r in vanishing(d, args.width_nl, s, gain):
                        append_jsonl(args.out, {**r, **env})
                        print({k: v for k, v in r.items() if not k.endswith("per_layer")})
    print(table(read_jsonl(args.out)))


if __name__ == "__main__":
    main()
