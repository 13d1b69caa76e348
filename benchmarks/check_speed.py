"""Time and peak memory of ``pcgraph check`` on a large generated model (issue 13's 10 MB file).

The model is a chain of ``--nodes`` nodes (default 180,000: about 61 bytes a node, 11 MB), each
``node hNNNNNN: [16] act = relu`` with a dense edge from the previous one. Each size runs in a
fresh subprocess (so that peak RSS is that one check's), which reports the CPU seconds of ``pcgraph.check`` and
the process's peak resident memory; ``--phases`` adds the split into parse, lower and validate
(timed in another process).

    nice -n 10 python benchmarks/check_speed.py [--nodes 18000 180000] [--phases] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

_CHILD = r"""
import gc, json, resource, sys, time
import pcgraph
from pcgraph import _load, _lower, _syntax
pcgraph.check("model m { node x: [2] }")  # the parser is built once per process, not timed
text = sys.stdin.read()
out = {"bytes": len(text.encode())}
if sys.argv[1] == "phases":
    gc.disable()  # as pcgraph.check does
    t0 = time.process_time()
    tree = _syntax.parse(text, "big.pcg")
    t1 = time.process_time()
    model, sources = _lower.lower(tree, "big.pcg", text)
    t2 = time.process_time()
    diags = list(_load._validator()(model, sources))
    t3 = time.process_time()
    out.update(parse_s=t1 - t0, lower_s=t2 - t1, validate_s=t3 - t2)
else:
    t = time.process_time()
    out["ok"] = pcgraph.check(text).ok  # the public path, end to end
    out["check_s"] = time.process_time() - t
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def chain_model(n: int) -> str:
    """A valid chain of ``n`` nodes, about 61 bytes a node (11 MB at 180,000 nodes)."""
    lines = ["model big {", "  settings { steps = 5 }", "  node x: [16]"]
    lines += [f"  node h{i:06d}: [16] act = relu" for i in range(1, n)]
    lines.append("  x -> h000001 : dense")
    lines += [f"  h{i - 1:06d} -> h{i:06d} : dense" for i in range(2, n)]
    lines += ["  query train { clamp x }", "}"]
    return "\n".join(lines) + "\n"


def measure(n: int, phases: bool = False) -> dict:
    """CPU seconds and peak RSS of ``pcgraph.check`` on a chain of ``n`` nodes, in a fresh
    process; with ``phases``, also the split into parse / lower / validate (another process, so
    that it does not add to the peak)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]), "JAX_PLATFORMS": "cpu"}
    text, out = chain_model(n), {"nodes": n}
    for mode in ("check", "phases") if phases else ("check",):
        res = subprocess.run([sys.executable, "-c", _CHILD, mode], input=text, text=True,
                             capture_output=True, check=True, env=env).stdout
        out.update(json.loads(res.strip().splitlines()[-1]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[180_000])
    ap.add_argument("--json", action="store_true", help="one JSON record per size")
    ap.add_argument("--phases", action="store_true", help="also time parse, lower, validate")
    args = ap.parse_args(argv)
    for n in args.nodes:
        r = measure(n, args.phases)
        if args.json:
            print(json.dumps(r), flush=True)
            continue
        split = (f" (parse {r['parse_s']:.1f}, lower {r['lower_s']:.1f}, validate "
                 f"{r['validate_s']:.1f})" if args.phases else "")
        print(f"{n:,} nodes, {r['bytes'] / 1e6:.1f} MB: check {r['check_s']:.1f} s CPU{split}, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, ok={r['ok']}", flush=True)


if __name__ == "__main__":
    main()
