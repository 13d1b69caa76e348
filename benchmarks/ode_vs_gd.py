"""JPC's claim, measured: do second-order ODE solvers (Heun, Tsit5) reach the inference equilibrium
in fewer steps / less wall time than Euler or plain GD? (issue 18)

Models: seed 004's MLP (``models/mlp_fmnist.pcg``: 784 -> 512 x 4 -> 10, gelu, categorical
output, batch 200, activity lr 0.1 per sample) and the μPC residual network
(``models/resnet_mupc.pcg`` at depth H = 32, width ``--resnet-width``, batch 64, activity lr
0.0078125 per sample = JPC's 0.5 on the batch mean), both on Fashion-MNIST training batches, forward
initialisation, default (untrained) weights.

1. ``relax``: one batch per seed. Every solver integrates the same gradient flow dh/dt = −∇F from the
   same start; Euler with dt = lr *is* GD. ``gap(t) = (F(t) − F_ref)/(F(0) − F_ref)`` with F_ref
   from a long GD run (``--ref-steps``). Recorded: steps and gradient evaluations until
   gap ≤ 1e-1 / 1e-2 (from the per-step energies over a fixed horizon), and — with the
   steady-state stop ‖∇F‖ < ss_atol + ss_rtol·‖h‖ (GD: ``tol`` set to the same threshold at the
   start) — the steps taken, the wall time of the compiled solve (compiled ahead of time, one
   timed run; capped at 3× the horizon) and the gap reached. "euler 2dt" is the step-size
   control for "heun 2dt": the table's paired contrasts (per seed, mean ± sd and the 95 % CI
   of the mean difference) separate the solver's effect from the step size's.
2. ``train``: the MLP trained for ``--train-batches`` batches (T = 5 steps of dt = 0.1, weights
   AdamW as in the model) with each solver; training accuracy on 2,000 training images against
   wall time.

    nice -n 10 python benchmarks/ode_vs_gd.py --out benchmarks/results/ode_vs_gd.jsonl
    nice -n 10 python benchmarks/ode_vs_gd.py --experiments relax --seeds 0 --configs "euler 2dt"
    python benchmarks/ode_vs_gd.py --table --png docs/img/ode_vs_gd.png

The table's "gap at t_h" / "evals to t_h" compare every configuration at the horizon's end time
(all integrate to the same time), so a larger step's saving shows as fewer evaluations.
"""

from __future__ import annotations

import argparse
import statistics
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import (ROOT, D, append_jsonl, ci95, int_list, machine, mean_sd, read_jsonl,
                     save_figure)

from pcgraph import (Evaluator, GradientDescent, GradientFlow, Initialisation, build,
                     compile_query, energy, infer, load, make_train_step)
from pcgraph._energy import forward_acts, topological_order
from pcgraph._infer import clamp_data

SOLVERS = {"euler": diffrax.Euler, "heun": diffrax.Heun, "tsit5": diffrax.Tsit5}


def _norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(tree))))


def gd(steps, lr, tol=0.0):
    return GradientDescent(steps=steps, optimizer=optax.sgd(lr), tol=tol)


def flow(solver, dt, steps, *, adaptive=False, rtol=1e-3, atol=1e-5, **kw):
    ctrl = (diffrax.PIDController(rtol=rtol, atol=atol) if adaptive
            else diffrax.ConstantStepSize())
    return GradientFlow(solver=SOLVERS[solver](), dt=dt, steps=steps, stepsize_controller=ctrl,
                        **kw)

# (label, solver, dt multiple of lr, adaptive)
CONFIGS = (("gd", "gd", 1, False), ("euler", "euler", 1, False), ("heun", "heun", 1, False),
           ("euler 2dt", "euler", 2, False), ("heun 2dt", "heun", 2, False),
           ("tsit5", "tsit5", 1, False), ("tsit5 adaptive", "tsit5", 1, True))
#: paired contrasts over seeds (A, B): "the solver at the same step" vs "the step size itself"
CONTRASTS = (("heun 2dt", "euler 2dt"), ("euler 2dt", "euler"), ("heun 2dt", "euler"))
EVALS = {"gd": 1, "euler": 1, "heun": 2, "tsit5": 6}  # gradient evaluations a step (Tsit5: FSAL)
TOLS = (1e-1, 1e-2)


def model(name: str, width: int):
    if name == "mlp":
        return load(str(ROOT / "models/mlp_fmnist.pcg")), 200, 0.1
    return (load(str(ROOT / "models/resnet_mupc.pcg"), params={"depth": 32, "width": width}), 64,
            0.0078125)


def _first(gap, tol):
    idx = np.nonzero(np.asarray(gap) <= tol)[0]
    return int(idx[0]) if len(idx) else None


def relax_records(name, width, seed, ds, horizon, ref_steps, ss_rtol, ss_atol, configs=None):
    m, B, lr = model(name, width)
    if name == "resnet":  # lr is 13x smaller: the same horizon in time needs more steps
        horizon, ref_steps = 4 * horizon, 4 * ref_steps
    net = build(m, seed=seed)
    q = compile_query(net, "train")
    lo = seed * B
    h = clamp_data(net, q, {"x": ds.x_train[lo:lo + B], "y": ds.y_train[lo:lo + B]})
    h0 = forward_acts(net, h, topological_order(net, q.clamp))
    F0 = float(energy(net, h0, q))
    # the reference equilibrium: the lower of a long GD run and a long adaptive Tsit5 solve
    ref = infer(net, q, h0, gd(ref_steps, lr))
    ref2 = infer(net, q, h0, flow("tsit5", lr, ref_steps, adaptive=True, rtol=1e-5, atol=1e-7,
                                  ss_rtol=1e-6, ss_atol=1e-8, max_steps=4 * ref_steps))
    F_ref = min(float(energy(net, ref.h, q)), float(energy(net, ref2.h, q)))
    thresh = ss_atol + ss_rtol * float(_norm(tuple(h0[g] for g in q.free_groups)))
    out = []
    for label, solver, mult, adaptive in CONFIGS:
        if configs and label not in configs:
            continue
        dt = lr * mult
        n = max(1, horizon // mult)
        if solver == "gd":
            rec = infer(net, q, h0, gd(n, lr))
            Fs = np.append(np.asarray(rec.energies), float(energy(net, rec.h, q)))
            run = jax.jit(lambda h0_: infer(net, q, h0_, gd(3 * horizon, lr, thresh)))
        else:
            rec = infer(net, q, h0, flow(solver, dt, n, adaptive=adaptive, steady_state=False,
                                         max_steps=4 * n if adaptive else None), record=True)
            e = np.asarray(rec.energies)
            Fs = np.concatenate([[F0], e[np.isfinite(e)]])
            run = jax.jit(lambda h0_, solver=solver, dt=dt, adaptive=adaptive: infer(
                net, q, h0_, flow(solver, dt, 3 * horizon, adaptive=adaptive, ss_rtol=ss_rtol,
                                  ss_atol=ss_atol, max_steps=3 * horizon)))
        gap = (Fs - F_ref) / (F0 - F_ref)
        run = run.lower(h0).compile()  # compiled ahead: the one timed run is the only run
        t0 = time.perf_counter()
        res = run(h0)
        jax.block_until_ready(res.h)
        times = [time.perf_counter() - t0]
        steps_ss = int(res.steps)
        F_ss = float(energy(net, res.h, q))
        r = {"experiment": "relax", "model": name, "width": width if name == "resnet" else 512,
             "seed": seed, "batch": B, "solver": label, "dt": dt, "adaptive": adaptive,
             "evals_per_step": EVALS[solver], "F0": F0, "F_ref": F_ref, "horizon_steps": n,
             "ss_rtol": ss_rtol, "ss_atol": ss_atol, "ss_steps": steps_ss,
             "ss_evals": steps_ss * EVALS[solver], "ss_wall_s": statistics.median(times),
             "ss_converged": bool(res.converged), "ss_gap": (F_ss - F_ref) / (F0 - F_ref),
             "gap_curve": [float(g) for g in gap]}
        for tol in TOLS:
            k = _first(gap, tol)
            r[f"steps_to_{tol:g}"] = k
            r[f"evals_to_{tol:g}"] = None if k is None else k * EVALS[solver]
        out.append(r)
        print({k: v for k, v in r.items() if k != "gap_curve"}, flush=True)
    return out


def train_records(seed, ds, n_batches, eval_every):
    m, B, lr = model("mlp", 0)
    out = []
    xs, ys = ds.x_train[:2000], ds.y_train[:2000]
    for label, solver in (("gd", "gd"), ("euler", "euler"), ("heun", "heun"), ("tsit5", "tsit5")):
        net = build(m, seed=seed)
        inf = gd(5, lr) if solver == "gd" else flow(solver, lr, 5, steady_state=False)
        step = make_train_step(net, "train", inference=inf)
        ev = Evaluator(inf, Initialisation())  # the test query's forward pass
        state = step.init(net, B)

        def acc(n_):
            return ev(n_, {"x": xs, "y": ys}, batch_size=500)["accuracy"]

        curve, wall = [(0.0, acc(net))], 0.0
        it = D.batches(ds.x_train, ds.y_train, B, seed=seed, epoch=0)
        for i in range(n_batches):
            xb, yb = next(it)
            t0 = time.perf_counter()
            net, state, metrics = step(net, state, {"x": xb, "y": yb})
            jax.block_until_ready(metrics["loss"])
            if i > 0:  # the first call compiles
                wall += time.perf_counter() - t0
            if (i + 1) % eval_every == 0 or i + 1 == n_batches:
                curve.append((wall, acc(net)))
        r = {"experiment": "train", "model": "mlp", "seed": seed, "solver": label,
             "batches": n_batches, "wall_s": wall, "acc_end": curve[-1][1], "curve": curve,
             "acc_per_s": curve[-1][1] / wall if wall > 0 else None}
        out.append(r)
        print(r, flush=True)
    return out


def _fmt(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def _at_horizon(r, key):
    """``gap_T``: the energy gap at the horizon's end time (every configuration integrates to the
    same time, horizon·lr: a "2dt" one in half the steps); ``evals_T``: the gradient evaluations
    it took to get there."""
    if key == "gap_T":
        return r["gap_curve"][-1]
    return (len(r["gap_curve"]) - 1) * r["evals_per_step"]


def _paired(rs, a, b, key):
    """Per-seed differences ``a − b`` of ``key`` over the seeds both have (None: missing)."""
    by = {(r["solver"], r["seed"]): _at_horizon(r, key) if key in ("gap_T", "evals_T")
          else r.get(key) for r in rs}
    seeds = sorted({r["seed"] for r in rs if r["solver"] == a} & {r["seed"] for r in rs
                                                                  if r["solver"] == b})
    d = [by[a, s] - by[b, s] for s in seeds if by[a, s] is not None and by[b, s] is not None]
    return d if len(d) == len(seeds) and d else None


def _contrasts(rs) -> list[str]:
    """Paired differences between configurations, per seed: mean ± sd [95 % CI of the mean]."""
    keys = (("evals_to_0.1", "grad evals to 1e-1", 1), ("gap_T", "gap at t_h", 4),
            ("evals_T", "evals to t_h", 1), ("ss_evals", "steady-state evals", 1),
            ("ss_gap", "steady-state gap", 4))
    rows = []
    for a, b in CONTRASTS:
        cells = []
        for key, _, digits in keys:
            d = _paired(rs, a, b, key)
            if d is None:
                cells.append("-")
                continue
            h = ci95(d)
            m = float(np.mean(d))
            cells.append(mean_sd(d, digits) + ("" if not np.isfinite(h) else
                                               f" [{m - h:.{digits}f}, {m + h:.{digits}f}]"))
        n = len({r["seed"] for r in rs if r["solver"] in (a, b)})
        rows.append(f"| {a} − {b} | {n} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return (["Paired differences (per seed: A − B; mean ± sd [95 % CI of the mean, Student's t]):",
             "", "| A − B | seeds | " + " | ".join(k[1] for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)] + rows + [""])


def table(records) -> str:
    lines = []
    for name in ("mlp", "resnet"):
        rs = [r for r in records if r["experiment"] == "relax" and r["model"] == name]
        if not rs:
            continue
        w = rs[0]["width"]
        title = ("seed-004 MLP 784→512×4→10, batch 200" if name == "mlp"
                 else f"μPC residual H = 32, width {w}, batch 64")
        lines += [f"**{title}** (mean ± sd over {len({r['seed'] for r in rs})} seeds; a dash: not "
                  "reached within the horizon in some seed; t_h: the horizon's end time, "
                  f"{_at_horizon(next(r for r in rs if r['solver'] == 'gd'), 'evals_T')} steps of "
                  "the activity lr)", "",
                  "| solver | dt | steps to 1e-1 | grad evals to 1e-1 | steps to 1e-2 | "
                  "grad evals to 1e-2 | gap at t_h | evals to t_h | steady-state stop: "
                  "steps | evals | wall ms | gap reached |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, *_ in CONFIGS:
            g = [r for r in rs if r["solver"] == label]
            if not g:
                continue

            def col(key, g=g, digits=0):
                v = [r[key] for r in g]
                return "-" if any(x is None for x in v) else mean_sd(v, digits)

            lines.append(
                f"| {label} | {g[0]['dt']:g}{' (PID)' if g[0]['adaptive'] else ''} | "
                f"{col('steps_to_0.1')} | {col('evals_to_0.1')} | {col('steps_to_0.01')} | "
                f"{col('evals_to_0.01')} | "
                f"{mean_sd([_at_horizon(r, 'gap_T') for r in g], 4)} | "
                f"{mean_sd([_at_horizon(r, 'evals_T') for r in g], 0)} | "
                f"{col('ss_steps')} | {col('ss_evals')} | "
                f"{mean_sd([1e3 * r['ss_wall_s'] for r in g], 1)} | "
                f"{mean_sd([r['ss_gap'] for r in g], 3)} |")
        lines.append("")
        lines += _contrasts(rs)
    tr = [r for r in records if r["experiment"] == "train"]
    if tr:
        lines += [f"**Training the MLP** ({tr[0]['batches']} batches of 200, T = 5; mean ± sd over "
                  f"{len({r['seed'] for r in tr})} seeds; wall time excludes compilation)", "",
                  "| solver | train accuracy | wall s | accuracy points per wall s |",
                  "|---|---|---|---|"]
        for label in ("gd", "euler", "heun", "tsit5"):
            g = [r for r in tr if r["solver"] == label]
            if g:
                lines.append(f"| {label} | {mean_sd([100 * r['acc_end'] for r in g], 1)} % | "
                             f"{mean_sd([r['wall_s'] for r in g], 1)} | "
                             f"{mean_sd([100 * r['acc_per_s'] for r in g], 2)} |")
    return "\n".join(lines)


def figure(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for a, name in zip(ax[:2], ("mlp", "resnet")):
        rs = [r for r in records if r["experiment"] == "relax" and r["model"] == name]
        for i, (label, *_rest) in enumerate(CONFIGS):
            g = [r for r in rs if r["solver"] == label and r["seed"] == min(x["seed"] for x in rs)]
            if not g:
                continue
            r = g[0]
            evals = np.arange(len(r["gap_curve"])) * r["evals_per_step"]
            a.plot(evals, np.maximum(r["gap_curve"], 1e-6), label=label, color=f"C{i}")
        a.set(yscale="log", xlabel="gradient evaluations", ylabel="relative energy gap",
              title=name + " (one batch)")
        a.legend(fontsize=7)
    tr = [r for r in records if r["experiment"] == "train"]
    for i, label in enumerate(("gd", "euler", "heun", "tsit5")):
        for r in [r for r in tr if r["solver"] == label]:
            t, acc = zip(*r["curve"])
            ax[2].plot(t, 100 * np.asarray(acc), color=f"C{i}",
                       label=label if r["seed"] == min(x["seed"] for x in tr) else None)
    ax[2].set(xlabel="training wall time (s)", ylabel="train accuracy (%)",
              title="MLP: accuracy vs wall time")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiments", default="relax,train")
    p.add_argument("--models", default="mlp,resnet")
    p.add_argument("--configs", default="", help="comma-separated solver labels to run "
                   "(default all), e.g. 'euler 2dt' to add a control to earlier seeds")
    p.add_argument("--resnet-width", type=int, default=128)
    p.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    p.add_argument("--horizon", type=int, default=40, help="steps of dt = lr recorded")
    p.add_argument("--ref-steps", type=int, default=200)
    p.add_argument("--ss-rtol", type=float, default=1e-3)
    p.add_argument("--ss-atol", type=float, default=1e-5)
    p.add_argument("--train-batches", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/ode_vs_gd.jsonl"))
    p.add_argument("--table", action="store_true")
    p.add_argument("--png", default="")
    args = p.parse_args()
    if args.table or args.png:
        recs = read_jsonl(args.out)
        if args.png:
            figure(recs, args.png)
        print(table(recs))
        return
    ds = D.load("fashion-mnist")
    env = {"machine": machine()}
    for s in args.seeds:
        if "relax" in args.experiments:
            for name in args.models.split(","):
                for r in relax_records(name, args.resnet_width, s, ds, args.horizon,
                                       args.ref_steps, args.ss_rtol, args.ss_atol,
                                       [c for c in args.configs.split(",") if c]):
                    append_jsonl(args.out, {**r, **env})
        if "train" in args.experiments:
            for r in train_records(s, ds, args.train_batches, args.eval_every):
                append_jsonl(args.out, {**r, **env})
    print(table(read_jsonl(args.out)))


if __name__ == "__main__":
    main()
