"""Run by tests/test_sharding.py (8 forced host devices): compile (only) the training step of a
16-layer residual net, width 32, batch 64, for data=8 and data=2,layer=4; print the collective
summaries as JSON, with the bytes of one boundary row [B/2, width] and of the parameters."""

import json
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import pcgraph as pc  # noqa: E402
from pcgraph import _collectives as C, _mesh as M, _sharding as S, make_train_step  # noqa: E402

B, WIDTH = 64, 32
model = pc.load("models/resnet_mupc.pcg", params={"depth": 16, "width": WIDTH})
net = pc.build(model, stack=True)
from pcgraph._infer import scan_unroll  # noqa: E402

T = pc.resolve_config(model.settings).inference.steps
out = {"row_bytes": (B // 2) * WIDTH * 4, "unroll": scan_unroll(T),
       "param_bytes": sum(a.size * 4 for a in jax.tree_util.tree_leaves(net.params))}
for mesh in ("data=8", "data=2,layer=4"):
    step = make_train_step(net, "train", jit=False)
    opt = eqx.filter_eval_shape(step.optimizer.init, eqx.filter(net, eqx.is_inexact_array))
    place = S.Placement.make(mesh, net, B)
    hlo = C.compiled_step_hlo(step, place, net, opt, {"x": ((B, 784), np.float32),
                                                      "y": ((B, 10), np.float32)})
    out[mesh] = C.collective_summary(C.collectives(hlo))
try:
    S.Placement.make("data=8", net, 12)
except M.MeshError as e:
    out["batch_error"] = str(e)
print(json.dumps(out))
