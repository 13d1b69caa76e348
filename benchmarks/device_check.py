"""One script for a short GPU slot: pcgraph's speed on an accelerator, written as JSON + markdown.

Parts (each in the same process, timed as paired interleaved rounds — every round calls every
implementation once; a figure is the median over rounds, ratios are medians of per-round ratios):

1. **μPC residual step** — ``models/resnet_mupc.pcg`` at width 512, H = T = 128, batch 64, one
   training iteration (forward init, T GD steps of lr 0.5 on the batch mean, Adam 0.05): pcgraph
   with ``stack`` = auto / True / False against a per-layer and a stacked-layer hand-written step
   (``_mupc_hand``), energies checked equal; the bandwidth floor = T × (weight bytes read per
   inference step) ÷ the device's bandwidth (measured by a large on-device copy, and the vendor
   figure where the device is known). Also the ``stack="auto"`` rule: auto must be within 5 % of
   the faster of True / False on this backend.
2. **MLP step** — 784 → 512×4 → 10 (tanh, categorical), batch 200, T = 5 and 20: pcgraph against
   the hand-written ``lax.scan`` and unrolled steps (``step_speed.py``).
3. **One epoch of Fashion-MNIST** — μPC, H = 128, width 512, JPC's settings (Adam 0.05, activity
   lr 0.5 on the batch mean, T = 128, batch 64) through ``pcgraph.fit``: test accuracy and
   ms/iteration (JPC: 84.93 % after 1 epoch, 135 ms/iteration on an H100). When the remaining
   budget cannot hold a full epoch, a stratified fraction of it is trained (reported).
4. **bf16 vs fp32** — parts 1 and 2's pcgraph steps at bf16 against fp32 (ms and energies), and,
   when the budget allows, part 3 at bf16 on the same data.

Reference (H100): JPC 135 ms/iteration, per-layer JAX 134 ms, a stacked-layer probe 28 ms; target
≤ 15 ms/iteration and ≤ 1.2× the stacked hand-written step. The whole run is sized for ≤ 6 minutes
on one GPU (``--budget``).

On the bare GPU image (jax, equinox, optax, diffrax; no package index), run from the carried
source tree, with wheels of pcgraph's other pure-Python imports (lark, networkx: made here with
``pip download --no-deps --only-binary=:all: -d wheels lark networkx``) put on ``sys.path`` by
``--wheels``::

    PYTHONPATH=. python benchmarks/device_check.py --data fashion-mnist --wheels wheels --out $OUT

``--smoke`` runs every part at tiny sizes on the CPU (about a minute of CPU time, mostly
compiling; one T in part 2, no MLP or Fashion-MNIST re-run at bf16 in part 4), as
``tests/test_device_check.py``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

#: vendor HBM bandwidth (bytes/s) by device kind substring
NOMINAL_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L4": 0.3e12}
JPC_REFERENCE = {"accuracy_1_epoch": 84.93, "ms_per_iteration_h100": 135.0,
                 "per_layer_jax_ms_h100": 134.0, "stacked_probe_ms_h100": 28.0,
                 "target_ms": 15.0, "target_ratio_to_stacked": 1.2}
FULL = dict(width=512, depth=128, batch=64, mlp_width=512, mlp_batch=200, mlp_steps=(5, 20),
            fraction=1.0, copy_mb=512, rounds=40)
SMOKE = dict(width=16, depth=4, batch=8, mlp_width=16, mlp_batch=8, mlp_steps=(2,),
             fraction=0.004, copy_mb=4, rounds=2)


def _wheels(d: str | None) -> None:
    for w in sorted(glob.glob(os.path.join(d, "*.whl"))) if d else ():
        sys.path.insert(0, w)  # pure-Python wheels import straight from the zip


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                    help="folder holding the Fashion-MNIST IDX files")
    ap.add_argument("--out", default="device_check", help="folder of the JSON + markdown report")
    ap.add_argument("--wheels", default=None, help="folder of wheels to import from")
    ap.add_argument("--smoke", action="store_true", help="every part at tiny sizes (CPU test)")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds for the whole run")
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4])
    args = ap.parse_args(argv)
    _wheels(args.wheels)
    import jax

    t_start = time.perf_counter()
    sizes = SMOKE if args.smoke else FULL
    dev = jax.devices()[0]
    report: dict = {
        "device": {"platform": dev.platform, "kind": getattr(dev, "device_kind", ""),
                   "backend": jax.default_backend(), "count": jax.device_count(),
                   "jax": jax.__version__, "python": sys.version.split()[0]},
        "smoke": args.smoke, "sizes": {k: list(v) if isinstance(v, tuple) else v
                                       for k, v in sizes.items()},
        "reference": JPC_REFERENCE, "parts": {}, "errors": {}}
    budget = {1: 0.35, 2: 0.12, 3: 0.38, 4: 0.15}  # shares of the total, for timing rounds
    for part in sorted(args.parts):
        left = args.budget - (time.perf_counter() - t_start)
        t0 = time.perf_counter()
        try:
            fn = {1: part_mupc, 2: part_mlp, 3: part_fashion, 4: part_bf16}[part]
            report["parts"][str(part)] = fn(sizes, args, report, max(left * budget[part], 1.0),
                                            left)
        except Exception as e:  # noqa: BLE001 - one failing part must not lose the others
            import traceback

            report["errors"][str(part)] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        if str(part) in report["parts"]:
            report["parts"][str(part)]["seconds"] = time.perf_counter() - t0
        _write(report, args.out)  # after every part: a slot ending early keeps what was done
    report["seconds"] = time.perf_counter() - t_start
    _write(report, args.out)
    print(markdown(report))
    return report


# ---------------------------------------------------------------------------------- helpers
def _bandwidth(mb: int) -> float:
    """Bytes/s of a large on-device copy-with-add (read + write)."""
    import jax
    import jax.numpy as jnp

    from _paired import once

    a = jnp.ones((mb * 2 ** 20 // 4,), jnp.float32)
    f = jax.jit(lambda a: a + 1.0)
    jax.block_until_ready(f(a))
    best = min(once(lambda: f(a)) for _ in range(10))
    return 2 * a.nbytes / best


def _nominal(kind: str):
    return next((v for k, v in NOMINAL_BANDWIDTH.items() if k in kind), None)


def _warm(fns) -> dict:
    import jax

    comp = {}
    for k, fn in fns.items():
        t = time.perf_counter()
        jax.block_until_ready(fn())
        comp[k] = time.perf_counter() - t
    return comp


def _timed(fns, ref: str, rounds: int, budget: float, compile_s=None) -> dict:
    """Warm every function up (its first call's time is its compile time unless
    ``compile_s`` has it), then paired rounds within ``budget`` seconds."""
    from _paired import paired_rounds, summary

    comp = {**_warm(fns), **(compile_s or {})}
    out = summary(paired_rounds(fns, rounds, budget), ref)
    for k in out:
        out[k]["compile_s"] = comp[k]
    return out


def _mupc_model(depth: int, width: int):
    import pcgraph

    return pcgraph.load(HERE.parent / "models" / "resnet_mupc.pcg",
                        params={"depth": depth, "width": width})


def _mupc_step(net, T: int, precision: str = "fp32"):
    import optax

    import pcgraph
    from _mupc_hand import ACT_LR, W_LR

    return pcgraph.make_train_step(
        net, "train", weight_optimizer=optax.adam(W_LR),
        inference=pcgraph.GradientDescent(T, optax.sgd(ACT_LR), activity_scale="batch"),
        init=pcgraph.Initialisation("forward"), precision=precision)


def _mupc_batch(B: int):
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    return {"x": jnp.asarray(rng.normal(size=(B, 784)), jnp.float32),
            "y": jnp.asarray(np.eye(10, dtype=np.float32)[rng.integers(0, 10, B)])}


def _pc_runner(step, net, batch):
    s0 = step.init(net)
    return lambda: step(net, s0, batch)[2]["energy_end"]


# ---------------------------------------------------------------------------------- parts
def part_mupc(sz, args, report, budget, left) -> dict:
    """Part 1: the μPC residual step, pcgraph (stack auto/True/False) vs hand-written."""
    import numpy as np

    import pcgraph
    from _mupc_hand import hand_params, hand_written_step, stacked_step, weight_bytes

    H, N, B = sz["depth"], sz["width"], sz["batch"]
    T = H
    model = _mupc_model(H, N)
    batch = _mupc_batch(B)
    fns, energies, compile_s, resolved = {}, {}, {}, None
    for s in ("auto", True, False):
        net = pcgraph.build(model, seed=0, stack=s)
        if s == "auto":
            # the minimum group size stacked (None: never), whatever the plan's type
            st = net.plan.stack
            resolved = getattr(st, "min_size", st)
        step = _mupc_step(net, T)
        t = time.perf_counter()
        m = step(net, step.init(net), batch)[2]
        energies[f"pcgraph stack={s}"] = (float(m["energy_start"]), float(m["energy_end"]))
        compile_s[f"pcgraph stack={s}"] = time.perf_counter() - t
        fns[f"pcgraph stack={s}"] = _pc_runner(step, net, batch)
    net = pcgraph.build(model, seed=0)
    for label, make, stacked in (("hand-written per-layer", hand_written_step, False),
                                 ("hand-written stacked", stacked_step, True)):
        hstep, hopt = make(H, N, T)
        hp = hand_params(net, H, stacked)
        hs0 = hopt.init(hp)
        t = time.perf_counter()
        _, _, F0, F1 = hstep(hp, hs0, batch["x"], batch["y"])
        energies[label] = (float(F0), float(F1))
        compile_s[label] = time.perf_counter() - t
        fns[label] = lambda hstep=hstep, hp=hp, hs0=hs0: hstep(hp, hs0, batch["x"], batch["y"])[3]
    ref = energies["hand-written per-layer"]
    agree = all(np.allclose(v, ref, rtol=1e-3) for v in energies.values())
    res = _timed(fns, "hand-written stacked", sz["rounds"], budget, compile_s)
    bw = _bandwidth(sz["copy_mb"])
    nominal = _nominal(report["device"]["kind"])
    wb = weight_bytes(H, N)
    auto = res["pcgraph stack=auto"]["ms_median"]
    best = min(res["pcgraph stack=True"]["ms_median"], res["pcgraph stack=False"]["ms_median"])
    ratio_auto = min(res["pcgraph stack=auto"]["ratio_median"]
                     / res[k]["ratio_median"] for k in ("pcgraph stack=True",
                                                          "pcgraph stack=False"))
    return {
        "name": "μPC residual step", "width": N, "depth": H, "T": T, "batch": B,
        "results": res, "energies": energies, "energies_agree": bool(agree),
        "bandwidth": {"measured_bytes_per_s": bw, "nominal_bytes_per_s": nominal,
                      "weight_bytes": wb,
                      "floor_ms_measured": 1e3 * T * wb / bw,
                      "floor_ms_nominal": 1e3 * T * wb / nominal if nominal else None},
        "stack_auto": {"backend": report["device"]["backend"], "resolved": resolved,
                       "auto_ms": auto, "best_fixed_ms": best,
                       "auto_over_best_paired": ratio_auto, "ok": bool(ratio_auto <= 1.05)},
    }


def part_mlp(sz, args, report, budget, left) -> dict:
    """Part 2: the MLP step at T = 5 / 20 against the hand-written steps."""
    from step_speed import runners

    out = {"name": "MLP step", "width": sz["mlp_width"], "batch": sz["mlp_batch"], "T": {}}
    for T in sz["mlp_steps"]:
        fns = runners("tanh", T, sz["mlp_batch"], sz["mlp_width"], bp=False,
                      stacked=not args.smoke)
        out["T"][str(T)] = _timed(fns, "hand-written lax.scan", sz["rounds"],
                                  budget / len(sz["mlp_steps"]))
    return out


def _fashion_fit(sz, data_dir, fraction, precision, H, N):
    import dataclasses

    import optax

    import pcgraph
    from _mupc_hand import ACT_LR, W_LR

    ds = pcgraph.data.load("fashion-mnist", data_dir=data_dir, fraction=fraction)
    net = pcgraph.build(_mupc_model(H, N), seed=0)
    cfg = pcgraph.resolve_config(net.plan.settings, epochs=1, batch_size=sz["batch"],
                                 weight_optimizer=optax.adam(W_LR), init="forward",
                                 precision=precision)
    cfg = dataclasses.replace(cfg, inference=pcgraph.GradientDescent(
        H, optax.sgd(ACT_LR), activity_scale="batch"))
    t = time.perf_counter()
    res = pcgraph.fit(net, ds, cfg, seed=0, trace_inference=False)
    wall = time.perf_counter() - t
    h = res.final
    pct = lambda v: None if v is None else 100.0 * v  # noqa: E731
    return {"fraction": fraction, "train_examples": len(ds.x_train),
            "steps": res.steps_per_epoch, "test_accuracy": pct(h.get("test_accuracy")),
            "train_accuracy": pct(h.get("train_accuracy")), "ms_per_iteration": h.get("ms_per_step"),
            "compile_s": h.get("compile_time_s"), "epoch_time_s": h.get("epoch_time_s"),
            "wall_s": wall, "precision": precision}


def part_fashion(sz, args, report, budget, left) -> dict:
    """Part 3: one epoch of Fashion-MNIST, μPC H = 128, width 512, JPC's settings."""
    H, N = sz["depth"], sz["width"]
    fraction = sz["fraction"]
    p1 = report["parts"].get("1")
    if p1 and not args.smoke:  # size the epoch to the budget from part 1's step time
        ms = p1["results"]["pcgraph stack=auto"]["ms_median"]
        fit_s = 60000 / sz["batch"] * ms / 1e3
        room = max(left - 0.25 * args.budget, 20.0)  # parts 2 and 4 still to come
        if fit_s > room:
            fraction = max(round(room / fit_s, 3), 0.01)
    out = {"name": "Fashion-MNIST, 1 epoch", "width": N, "depth": H, "T": H,
           "batch": sz["batch"], "settings": "Adam 0.05, activity lr 0.5 (batch mean), "
           "forward init", "fp32": _fashion_fit(sz, args.data, fraction, "fp32", H, N)}
    return out


def part_bf16(sz, args, report, budget, left) -> dict:
    """Part 4: bf16 against fp32 (the μPC and MLP steps; part 3 again at bf16 if time allows)."""
    import pcgraph
    from step_speed import runners

    H, N, B = sz["depth"], sz["width"], sz["batch"]
    model = _mupc_model(H, N)
    batch = _mupc_batch(B)
    fns, energies = {}, {}
    net = pcgraph.build(model, seed=0)
    for label in ("fp32", "bf16"):
        step = _mupc_step(net, H, label)
        m = step(net, step.init(net), batch)[2]
        energies[label] = {"energy_start": float(m["energy_start"]),
                           "energy_end": float(m["energy_end"]),
                           "dtype": str(m["energy_end"].dtype)}
        fns[f"μPC {label}"] = _pc_runner(step, net, batch)
    T = sz["mlp_steps"][-1]
    for label in ("fp32", "bf16")[:0 if args.smoke else 2]:
        mlp = runners("tanh", T, sz["mlp_batch"], sz["mlp_width"], bp=False, stacked=False,
                      hand=False, precision=label)
        fns[f"MLP T={T} {label}"] = mlp["pcgraph"]
    res = _timed(fns, "μPC fp32", sz["rounds"], budget)
    if f"MLP T={T} bf16" in res:
        a, b = f"MLP T={T} bf16", f"MLP T={T} fp32"
        res[a]["ratio_to_fp32"] = res[a]["ratio_median"] / res[b]["ratio_median"]
    res["μPC bf16"]["ratio_to_fp32"] = res["μPC bf16"]["ratio_median"]
    e32, e16 = energies["fp32"]["energy_start"], energies["bf16"]["energy_start"]
    out = {"name": "bf16 vs fp32", "results": res, "energies": energies,
           "energy_start_rel_diff": abs(e16 - e32) / max(abs(e32), 1e-30)}
    p3 = report["parts"].get("3")
    # part 3 again at bf16 where the rest of the budget holds it (not in the smoke run: the same
    # function as part 3, with another dtype)
    if p3 and not args.smoke and p3["fp32"]["wall_s"] < 0.6 * (left - budget):
        out["fashion_bf16"] = _fashion_fit(sz, args.data, p3["fp32"]["fraction"], "bf16", H, N)
    return out


# ---------------------------------------------------------------------------------- report
def _write(report: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "device_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out, "device_check.md"), "w") as f:
        f.write(markdown(report))


def _f(v, fmt="{:.2f}"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return fmt.format(v)


def _table(res: dict, ref: str) -> list[str]:
    lines = [f"| implementation | ms (median) | min | compile s | ratio to {ref} |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for k, s in res.items():
        lines.append(f"| {k} | {_f(s['ms_median'])} | {_f(s['ms_min'])} | "
                     f"{_f(s.get('compile_s'), '{:.1f}')} | {_f(s['ratio_median'], '{:.3f}')} |")
    return lines


def markdown(r: dict) -> str:
    d = r["device"]
    L = [f"# pcgraph device check{' (smoke)' if r['smoke'] else ''}", "",
         f"{d['platform']} ({d['kind']}), {d['count']} device(s), jax {d['jax']}, "
         f"python {d['python']}; total {_f(r.get('seconds'), '{:.0f}')} s. Paired interleaved "
         "rounds; ratios are medians of per-round ratios.", ""]
    p = r["parts"]
    if "1" in p:
        q = p["1"]
        bw = q["bandwidth"]
        L += [f"## 1. μPC residual step (width {q['width']}, H = T = {q['depth']}, batch "
              f"{q['batch']})", "", *_table(q["results"], "hand-written stacked"), "",
              f"Energies agree across implementations: {q['energies_agree']}. Bandwidth floor "
              f"(T × {bw['weight_bytes'] / 2**20:.1f} MiB of weights ÷ bandwidth): "
              f"{_f(bw['floor_ms_measured'], '{:.3f}')} ms at the measured "
              f"{bw['measured_bytes_per_s'] / 1e9:.0f} GB/s"
              + (f", {_f(bw['floor_ms_nominal'], '{:.3f}')} ms at the nominal "
                 f"{bw['nominal_bytes_per_s'] / 1e9:.0f} GB/s" if bw["nominal_bytes_per_s"]
                 else "") + ". Reference (H100): JPC 135 ms, per-layer JAX 134 ms, stacked "
              "probe 28 ms; target ≤ 15 ms and ≤ 1.2× the stacked hand-written step.", "",
              f"`stack=\"auto\"` on {q['stack_auto']['backend']} resolves to "
              f"{q['stack_auto']['resolved']!r}; auto / best fixed choice (paired) = "
              f"{_f(q['stack_auto']['auto_over_best_paired'], '{:.3f}')} "
              f"({'ok' if q['stack_auto']['ok'] else 'FAILS the ≤ 1.05 rule'}).", ""]
    if "2" in p:
        q = p["2"]
        for T, res in q["T"].items():
            L += [f"## 2. MLP step, T = {T} (784 → {q['width']}×4 → 10, tanh, batch "
                  f"{q['batch']})", "", *_table(res, "hand-written lax.scan"), ""]
    if "3" in p:
        q = p["3"]
        L += [f"## 3. Fashion-MNIST, one epoch (μPC H = {q['depth']}, width {q['width']}, "
              f"T = {q['T']}, {q['settings']})", "",
              "| precision | fraction of the epoch | steps | test accuracy % | ms / iteration | "
              "compile s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        runs = [("fp32", q["fp32"])]
        if "4" in p and "fashion_bf16" in p["4"]:
            runs.append(("bf16", p["4"]["fashion_bf16"]))
        for label, f in runs:
            L.append(f"| {label} | {f['fraction']} | {f['steps']} | "
                     f"{_f(f['test_accuracy'])} | {_f(f['ms_per_iteration'])} | "
                     f"{_f(f['compile_s'], '{:.1f}')} |")
        L += ["", "JPC: 84.93 % after one epoch, 135 ms/iteration on an H100.", ""]
    if "4" in p:
        q = p["4"]
        L += ["## 4. bf16 vs fp32", "", *_table(q["results"], "μPC fp32"), "",
              f"Energy at t = 0, bf16 vs fp32: relative difference "
              f"{q['energy_start_rel_diff']:.2e} (energies computed in "
              f"{q['energies']['bf16']['dtype']}).", ""]
    if r["errors"]:
        L += ["## Errors", ""] + [f"- part {k}: {v}" for k, v in r["errors"].items()] + [""]
    return "\n".join(L)


if __name__ == "__main__":
    main()
