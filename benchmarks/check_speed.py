"""Time and peak memory of ``pcgraph check`` on a large generated model (issue 13's 10 MB file).

The model is a chain of ``--nodes`` nodes (default 180,000: about 61 bytes a node, 11 MB), each
``node hNNNNNN: [16] act = relu`` with a dense edge from the previous one. Each size runs in a
fresh subprocess (so that peak RSS is that one check's), which reports the CPU seconds of ``pcgraph.check`` and
the process's peak resident memory; ``--phases`` adds the split into parse, lower and validate
(timed in another process). ``--worst`` times the 100 kB inputs that cost the most per byte
(a valid chain, syntax errors after a 100,000-character identifier, a 45,000-term sum); the
issue asks for under 1 s each. ``--code DIR`` imports pcgraph from another checkout (a before /
after comparison); ``--record FILE`` appends one JSON line a measurement.

    nice -n 10 python benchmarks/check_speed.py [--nodes 18000 180000] [--phases] [--worst]
        [--json] [--record benchmarks/results/check_speed.jsonl] [--code /path/to/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

_CHILD = r"""
import gc, json, resource, sys, time
import pcgraph
from pcgraph import _load, _lower, _syntax
pcgraph.check("model m { node x: [2] }")  # the parser is built once per process, not timed
text = sys.stdin.read()
out = {"bytes": len(text.encode())}
if sys.argv[1] == "worst":
    out = {}
    for name, case in json.loads(text).items():
        best = float("inf")
        for _ in range(3):  # the least of 3: the machine is shared
            t = time.process_time()
            pcgraph.check(case)
            best = min(best, time.process_time() - t)
        out[name] = {"bytes": len(case.encode()), "check_s": round(best, 3)}
elif sys.argv[1] == "phases":
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


def worst_cases() -> dict[str, str]:
    """Inputs of about 100 kB that cost the most per byte (each must check in under 1 s)."""
    return {
        "valid chain, 1,620 nodes": chain_model(1620),
        "identifier of 100,000 characters": "model m { node " + "a" * 100_000 + " }",
        "unclosed name interpolation": "model m { x" + "{" + "b" * 99_000 + " }",
        "error after a long identifier": "model m { node h: [3] " + "h" * 100_000 + "{",
        "sum of 45,000 terms": "model m { param a = " + "+".join(["1"] * 45_000) + " }",
        "3,000 nested parentheses": "model m { param a = " + "(" * 3000 + "1" + ")" * 3000 + " }",
    }


def _env(code: str | None) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [code or ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]), "JAX_PLATFORMS": "cpu"}


def measure_worst(code: str | None = None) -> dict:
    """CPU seconds of ``pcgraph.check`` on each of :func:`worst_cases` (least of 3 runs)."""
    res = subprocess.run([sys.executable, "-c", _CHILD, "worst"], input=json.dumps(worst_cases()),
                         text=True, capture_output=True, check=True, env=_env(code)).stdout
    return json.loads(res.strip().splitlines()[-1])


def measure(n: int, phases: bool = False, code: str | None = None) -> dict:
    """CPU seconds and peak RSS of ``pcgraph.check`` on a chain of ``n`` nodes, in a fresh
    process; with ``phases``, also the split into parse / lower / validate (another process, so
    that it does not add to the peak)."""
    env = _env(code)
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
    ap.add_argument("--worst", action="store_true", help="also time the 100 kB worst cases")
    ap.add_argument("--code", help="the checkout to import pcgraph from (default: this one)")
    ap.add_argument("--record", help="append one JSON line a measurement to this file")
    args = ap.parse_args(argv)
    meta = {"benchmark": "check_speed", "code": _revision(args.code or ROOT),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpu_count": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 1)}
    records = []
    for n in args.nodes:
        r = measure(n, args.phases, args.code)
        records.append({**meta, "setting": {"nodes": n}, **r})
        if args.json:
            print(json.dumps(r), flush=True)
            continue
        split = (f" (parse {r['parse_s']:.1f}, lower {r['lower_s']:.1f}, validate "
                 f"{r['validate_s']:.1f})" if args.phases else "")
        print(f"{n:,} nodes, {r['bytes'] / 1e6:.1f} MB: check {r['check_s']:.1f} s CPU{split}, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, ok={r['ok']}", flush=True)
    if args.worst:
        w = measure_worst(args.code)
        records.append({**meta, "setting": {"worst_100kB": True}, "cases": w})
        for name, r in w.items():
            print(f"{name}: {r['bytes']:,} bytes, check {r['check_s']:.2f} s CPU", flush=True)
    if args.record:
        with open(args.record, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


def _revision(path: str) -> str:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    main()
