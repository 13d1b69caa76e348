"""Scaling past one device (``fit(mesh=...)``, pcgraph._sharding): strong and weak scaling, and
the communication volume of data- vs layer-parallel training read from the compiled HLO.

* ``--scaling``: the μPC residual net (models/resnet_mupc.pcg, ``--depth``/``--width``) trained for
  ``--steps`` steps on 1, 2, 4, 8 devices, data-parallel (``data=n``) and layer-parallel
  (``layer=n``); strong scaling keeps the global batch (``--batch``), weak scaling keeps the batch
  per device. Per run: ``ms_per_step`` (fit's own timing, compile excluded) and the largest
  parameter difference from the one-device run after the same steps (SGD on the weights, so the
  difference measures the sharded arithmetic, not Adam's ε; see docs/scaling.md).
* ``--hlo``: compile only (nothing runs) the training step at ``--hlo-depth`` × ``--hlo-width``
  (default H = 128, width 512) for each ``--hlo-mesh`` and count the collectives of one inference
  step (inside the scan) and of the rest of the step, with their bytes per device.

On a CPU-only machine the devices are XLA's forced host devices
(``--xla_force_host_platform_device_count=8``, set here before JAX starts): they share the host's
cores, so the CPU figures measure correctness and the sharding overhead, not a speed-up. Where
several GPUs are visible the same runs use them (``--platform gpu``).

    python benchmarks/scaling.py --scaling --hlo          # all of it, records appended to --out
    python benchmarks/scaling.py --table                   # the tables of docs/results.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "scaling.jsonl"


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scaling", action="store_true", help="strong and weak scaling runs")
    p.add_argument("--hlo", action="store_true", help="HLO collective volume (compile only)")
    p.add_argument("--table", action="store_true", help="print the tables from --out")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--axes", nargs="+", default=["data", "layer"])
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--T", type=int, default=8, help="inference steps of the scaling runs")
    p.add_argument("--batch", type=int, default=64, help="strong: global batch; weak: per device")
    p.add_argument("--steps", type=int, default=20, help="training steps per run")
    p.add_argument("--hlo-depth", type=int, default=128)
    p.add_argument("--hlo-width", type=int, default=512)
    p.add_argument("--hlo-batch", type=int, default=64)
    p.add_argument("--hlo-mesh", nargs="+", default=["data=8", "data=2,layer=4", "layer=8"])
    p.add_argument("--hlo-init", default=None,
                   help="activity initialisation of the HLO step (default: the model's, forward)")
    p.add_argument("--platform", default="cpu", help="cpu (forced host devices) or gpu")
    p.add_argument("--out", default=str(OUT))
    return p.parse_args(argv)


def _machine():
    import platform

    import jax

    return {"machine": f"{platform.machine()} {os.cpu_count()} CPU cores",
            "load_average_1min": os.getloadavg()[0],
            "jax": jax.__version__, "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count()}


def _append(path, rec):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _model(depth, width):
    import pcgraph as pc

    return pc.load(str(ROOT / "models" / "resnet_mupc.pcg"),
                   params={"depth": depth, "width": width})


def scaling(a):
    import jax
    import numpy as np
    import optax

    import pcgraph as pc

    model = _model(a.depth, a.width)
    net = pc.build(model, stack=True)
    for mode in ("strong", "weak"):
        for axis in a.axes:
            ref = None
            for n in a.devices:
                if n > jax.device_count():
                    continue
                B = a.batch if mode == "strong" else a.batch * n
                rng = np.random.default_rng(0)
                data = {"x": rng.standard_normal((B * a.steps, 784)).astype(np.float32),
                        "y": np.eye(10, dtype=np.float32)[rng.integers(0, 10, B * a.steps)]}
                kw = dict(epochs=1, batch_size=B, eval_data=False, trace_inference=False,
                          steps=a.T, weight_optimizer=optax.sgd(0.05))
                mesh = None if n == 1 else f"{axis}={n}"
                t0 = time.perf_counter()
                res = pc.fit(net, data, mesh=mesh, **kw)
                wall = time.perf_counter() - t0
                leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(res.net)]
                if n == 1:
                    one = {"ms": res.history[-1]["ms_per_step"], "leaves": leaves, "B": B}
                    if mode == "strong" or ref is None:
                        ref = one
                diff = None
                if mode == "strong" and ref is not None:
                    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(ref["leaves"], leaves))
                rec = {"kind": mode, "axis": axis, "devices": n, "mesh": mesh or "one device",
                       "model": f"resnet_mupc depth {a.depth} width {a.width}", "T": a.T,
                       "global_batch": B, "steps": res.state.step,
                       "ms_per_step": res.history[-1]["ms_per_step"],
                       "compile_s": res.history[-1]["compile_time_s"], "wall_s": wall,
                       "max_param_diff_vs_one_device": diff, "traces": res.traces,
                       **_machine()}  # the load average when this run ended
                _append(a.out, rec)
                print(json.dumps({k: rec[k] for k in ("kind", "axis", "devices", "global_batch",
                                                      "ms_per_step",
                                                      "max_param_diff_vs_one_device")}),
                      flush=True)


def hlo(a):
    import equinox as eqx
    import numpy as np

    import pcgraph as pc
    from pcgraph import _collectives as C, _sharding as S, make_train_step

    model = _model(a.hlo_depth, a.hlo_width)
    t0 = time.perf_counter()
    net = pc.build(model, stack=True)
    print(f"built H = {a.hlo_depth}, width {a.hlo_width} in {time.perf_counter() - t0:.1f} s",
          flush=True)
    import jax

    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(net.params))
    B = a.hlo_batch
    for mesh in a.hlo_mesh:
        step = make_train_step(net, "train", jit=False,
                               init=pc.Initialisation(a.hlo_init) if a.hlo_init else None)
        opt = eqx.filter_eval_shape(step.optimizer.init, eqx.filter(net, eqx.is_inexact_array))
        place = S.Placement.make(mesh, net, B)
        t0 = time.perf_counter()
        text = C.compiled_step_hlo(step, place, net, opt, {"x": ((B, 784), np.float32),
                                                           "y": ((B, 10), np.float32)})
        summ = C.collective_summary(C.collectives(text))
        rec = {"kind": "hlo", "mesh": mesh, "depth": a.hlo_depth, "width": a.hlo_width,
               "init": a.hlo_init or model.settings.get("init"),
               "batch": B, "T": int(model.settings.get("steps")), "param_bytes": param_bytes,
               "compile_s": time.perf_counter() - t0, **summ, **_machine()}
        _append(a.out, rec)
        print(json.dumps({k: rec[k] for k in ("mesh", "per_inference_step", "per_step_outside",
                                              "bytes_per_step")}), flush=True)


def _mb(b):
    return f"{b / 2**20:.3g} MiB" if b >= 2**20 else f"{b / 2**10:.3g} KiB" if b >= 2**10 \
        else f"{b} B"


def _ops(d):
    return ", ".join(f"{n}× {op} ({_mb(b)})" for op, (n, b) in sorted(d.items())) or "none"


def table(a):
    recs = [json.loads(x) for x in Path(a.out).read_text().splitlines() if x.strip()]
    hl = {}
    for r in recs:
        if r["kind"] == "hlo":
            hl[(r["mesh"], r["depth"], r["width"], r["batch"], r.get("init", "forward"))] = r
    if hl:
        print("| mesh | init | per inference-loop body (2 steps: ×T/2) | once per training step | bytes per "
              "step per device |")
        print("| --- | --- | --- | --- | --- |")
        for (mesh, d, w, b, init), r in hl.items():
            print(f"| {mesh} (H = {d}, width {w}, batch {b}, T = {r['T']}) | {init} | "
                  f"{_ops(r['per_inference_step'])} | {_ops(r['per_step_outside'])} | "
                  f"{_mb(r['bytes_per_step'])} |")
        print()
    runs = {}
    for r in recs:
        if r["kind"] in ("strong", "weak"):
            runs[(r["kind"], r["axis"], r["devices"], r["model"], r["global_batch"])] = r
    if runs:
        print("| scaling | axis | devices | global batch | ms / step | vs 1 device | "
              "max abs Δθ vs 1 device |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        base = {}
        for (kind, axis, n, model, B), r in sorted(runs.items()):
            if n == 1:
                base[(kind, axis, model)] = r["ms_per_step"]
        for (kind, axis, n, model, B), r in sorted(runs.items()):
            b = base.get((kind, axis, model))
            rel = f"{r['ms_per_step'] / b:.2f}×" if b else ""
            d = r["max_param_diff_vs_one_device"]
            print(f"| {kind} | {axis} | {n} | {B} | {r['ms_per_step']:.1f} | {rel} | "
                  f"{'' if d is None else f'{d:.1e}'} |")


def main(argv=None):
    a = _args(argv)
    if a.table:
        table(a)
        return
    if a.platform == "cpu":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={max(a.devices)}")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if a.scaling:
        scaling(a)
    if a.hlo:
        hlo(a)


if __name__ == "__main__":
    main()
