"""The step-memory estimate (``pcgraph._limits.step_bytes``, checked before anything is allocated)
against XLA's own account of the compiled training step (``memory_analysis``: arguments +
outputs + temporaries − aliased), for models of different sizes and kinds (dense, residual, conv).

Prints one line (or JSON record) per model: estimate, measured, and estimate / measured, which
``step_bytes`` means to keep at or above 1 (an underestimate would let a run through that then
runs out of memory) and not far above (an overestimate refuses runs that would fit).

    nice -n 10 python benchmarks/step_memory.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import pcgraph as pc  # noqa: E402
from pcgraph._limits import step_bytes  # noqa: E402

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models")
# (model file, params, batch size)
CASES = [
    ("mlp_fmnist.pcg", {"width": 64}, 16),
    ("mlp_fmnist.pcg", {"width": 512}, 256),
    ("mlp_fmnist.pcg", {"width": 1024}, 8),
    ("resnet_mupc.pcg", {"depth": 8, "width": 128}, 128),
    ("conv_mnist.pcg", None, 64),
    ("conv_cifar.pcg", None, 32),
]


def measured_bytes(model, batch_size: int, query: str = "train") -> int:
    """XLA's peak estimate of the compiled training step (nothing is run or allocated)."""
    net = pc.build(model)
    step = pc.make_train_step(net, query, jit=False)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    abstract = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype) if hasattr(a, "shape") else a, tree)
    opt = eqx.filter_eval_shape(lambda p: step.init(eqx.combine(p, static), batch_size)
                                if step.stateful else step.optimizer.init(p), params)
    q = next(q for q in model.queries if q.name == query)
    shapes = {n.name: tuple(n.shape) for n in model.nodes}
    batch = {c: jax.ShapeDtypeStruct((batch_size,) + shapes[c], jnp.float32) for c in q.clamp}

    def run(p, o, b):
        return step(eqx.combine(p, static), o, b, jax.random.PRNGKey(0))

    ma = jax.jit(run).lower(abstract(params), abstract(opt), batch).compile().memory_analysis()
    return (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
            - ma.alias_size_in_bytes)


def measure(file: str, params: dict | None, batch_size: int) -> dict:
    model = pc.load(os.path.join(MODELS, file), params=params)
    est, got = step_bytes(model, batch_size), measured_bytes(model, batch_size)
    return {"model": file, "params": params, "batch_size": batch_size, "estimate": est,
            "measured": got, "ratio": est / got}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    for file, params, b in CASES:
        r = measure(file, params, b)
        print(json.dumps(r) if args.json else
              f"{file} {params or ''} batch {b}: estimate {r['estimate'] / 2**20:.1f} MiB, "
              f"measured {r['measured'] / 2**20:.1f} MiB, ratio {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
