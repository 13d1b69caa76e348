"""Cost accounting: sequential matrix multiplications (SMM) per batch and per weight update.

Seed 004 eq. 5-6: a PC step costs ``2T`` plus the initialisation's longest matmul chain (``L`` for
a forward pass through an L-layer network, 2 for a memory retrieval); iPC spreads the same over its
``T`` weight updates; BP costs ``2L − 1`` (``L`` the longest path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import networkx as nx

from ._memory import memory_smm

if TYPE_CHECKING:
    from ._init_plan import SweepPlan


def init_smm(
    plan: Mapping[str, str],
    G: nx.DiGraph,
    *,
    amortised_depth: Mapping[str, int] | None = None,
    sweep: "SweepPlan | None" = None,
) -> int:
    """Sequential matrix multiplications of the initialisation (seed 004 eq. 5–6): the longest
    chain of matmuls before inference starts. Clamped/zero/random/null/avg: 0 (no matmul; avg is
    layer-local, eq. 7). forward: 1 + the deepest parent, and the prediction of the
    first non-forward node after it adds one (a forward pass through an L-layer MLP costs L, eq. 6). mem: 2 (``o·(QKᵀ)`` then ``·V``), and nodes
    forward-initialised from a memorised node (``mem_forward``) add to it. amortised: its depth on the ``~>`` path.
    sweep: its depth in the sweep DAG."""
    d: dict[str, int] = {}

    def depth(v: str, seen=()) -> int:
        if v in d:
            return d[v]
        m = plan.get(v, "clamped")
        if m in ("forward", "mem_forward"):
            if v in seen:
                raise ValueError(f"forward planned on a cycle through {v}")
            val = 1 + max((depth(u, seen + (v,)) for u in G.predecessors(v)), default=-1)
        elif m == "mem":
            val = memory_smm()
        elif m == "amortised":
            val = (amortised_depth or {}).get(v, 1)
        elif m == "sweep":
            val = sweep.depth.get(v, 0) if sweep is not None else 0
        else:
            val = 0
        d[v] = val
        return val

    best = max((depth(v) for v in G), default=0)
    # eq. 6 counts one matmul per layer of the forward pass, the output's prediction included
    # (it is what makes F(h(0)) the output loss): a forward-initialised node's children add one.
    for u, v in G.edges:
        fw = ("forward", "mem_forward", "sweep")
        if plan.get(u) in fw and plan.get(v) not in fw:
            best = max(best, depth(u) + 1)
    return best


def smm_pc(steps: int, init_smm_value: int = 0) -> int:
    """SMM_PC = 2T (+ the initialisation's SMMs, e.g. + L for a forward pass)."""
    return 2 * int(steps) + int(init_smm_value)


def smm_bp(longest_path: int) -> int:
    """SMM_BP = 2L − 1."""
    return 2 * int(longest_path) - 1


def step_cost(method: str, steps: int, init_smm_value: int | None,
              longest_path: int | None) -> dict:
    """The SMM record of a training step: ``steps``, ``init_smm``, ``smm_pc``, ``smm_bp`` and
    ``smm_per_update`` (what one weight update costs for ``method`` = pc | ipc | bp)."""
    T = int(steps)
    out = {"steps": T, "smm_bp": smm_bp(longest_path) if longest_path else None}
    if method == "bp":
        out.update(init_smm=0, smm_pc=None, smm_per_update=out["smm_bp"])
        return out
    out.update(init_smm=init_smm_value, smm_pc=smm_pc(T, init_smm_value))
    out["smm_per_update"] = out["smm_pc"] / max(T, 1) if method == "ipc" else out["smm_pc"]
    return out
