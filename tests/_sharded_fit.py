"""Run by tests/test_sharding.py in a subprocess with 8 forced host devices: train one model for
10 steps on one device and on each given mesh, print the largest parameter difference per mesh
as JSON. argv: SPEC MESH... with SPEC a JSON object: path, params, stack, batch, steps, T (inference
steps), init, optimizer ({"sgd": lr}; default: the model's)."""

import dataclasses
import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import pcgraph as pc  # noqa: E402


def main() -> None:
    spec = json.loads(sys.argv[1])
    model = pc.load(spec["path"], params=spec.get("params") or None)
    net = pc.build(model, stack=spec.get("stack", "auto"))
    B, steps = spec.get("batch", 16), spec.get("steps", 10)
    rng = np.random.default_rng(0)
    arrays = {}
    train = model.query("train")
    for name in train.clamp:
        shape = net.node_shape(name)
        arrays[name] = rng.standard_normal((B * steps, *shape)).astype(net.dtype)
    if spec.get("data"):  # a data set (class-balanced batches for init = avg), B * steps examples
        ds = pc.data.load(spec["data"])
        arrays = dataclasses.replace(ds, x_train=ds.x_train[:B * steps],
                                     y_train=ds.y_train[:B * steps])
    opt = spec.get("optimizer")
    kw = dict(epochs=1, batch_size=B, eval_data=False, trace_inference=False,
              weight_optimizer=optax.sgd(opt["sgd"]) if opt and "sgd" in opt else None,
              init=spec.get("init"), steps=spec.get("T"))
    ref = pc.fit(net, arrays, **kw)
    out = {"steps": ref.state.step}
    ref_leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(ref.net)]
    for mesh in sys.argv[2:]:
        res = pc.fit(net, arrays, mesh=mesh, **kw)
        leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(res.net)]
        out[mesh] = max(float(np.max(np.abs(a - b))) for a, b in zip(ref_leaves, leaves)
                        if a.size)
        if ref.state.carry is not None:
            out[mesh + ":carry"] = max(
                float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(jax.tree_util.tree_leaves(ref.state.carry),
                                jax.tree_util.tree_leaves(res.state.carry)) if np.size(a))
        out[mesh + ":traces"] = res.traces
    print(json.dumps(out))


if __name__ == "__main__":
    main()
