"""Run by tests/test_sharding.py in a subprocess with 8 forced host devices: train one model for
10 steps on one device and on each given mesh, print the largest parameter difference per mesh
as JSON. argv: SPEC MESH... with SPEC a JSON object: path, params, stack, batch, steps, T
(inference steps), init, optimizer ({"sgd": lr} or {"adam": lr, "eps": eps}; default: the
model's), reorders (also train on one device with the rows of each batch in N other orders;
"reordered": the largest difference of each from the first run)."""

import dataclasses
import json
import os
import sys
import warnings

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import pcgraph as pc  # noqa: E402
from pcgraph._sharding import SequentialInitWarning  # noqa: E402


def reordered(arrays: dict, B: int, r: int) -> dict:
    """``arrays`` whose training batches (epoch 0, seed 0: data.batches' permutation) hold the
    same rows in another order: reversed (r = 0) or shuffled by seed r. The same sums, summed in
    another order."""
    n = len(next(iter(arrays.values())))
    perm = np.random.default_rng([0, 0]).permutation(n)
    moved = perm.copy()
    for i in range(0, n - n % B, B):
        blk = perm[i:i + B]
        moved[i:i + B] = blk[::-1] if r == 0 else np.random.default_rng(r).permutation(blk)
    out = {}
    for k, v in arrays.items():
        out[k] = np.array(v)
        out[k][perm] = v[moved]
    return out


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
              weight_optimizer=(optax.sgd(opt["sgd"]) if opt and "sgd" in opt else
                                optax.adam(opt["adam"], eps=opt.get("eps", 1e-8)) if opt else None),
              init=spec.get("init"), steps=spec.get("T"))
    ref = pc.fit(net, arrays, **kw)
    out = {"steps": ref.state.step}
    ref_leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(ref.net)]
    if spec.get("reorders"):  # one device, the rows of every batch in another order
        out["reordered"] = [
            max(float(np.max(np.abs(a - np.asarray(b)))) for a, b in zip(
                ref_leaves, jax.tree_util.tree_leaves(pc.fit(net, reordered(arrays, B, r),
                                                             **kw).net)) if a.size)
            for r in range(spec["reorders"])]
    for mesh in sys.argv[2:]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = pc.fit(net, arrays, mesh=mesh, **kw)
        out[mesh + ":warned"] = any(issubclass(w.category, SequentialInitWarning) for w in caught)
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
