"""The issue-14 tables of docs/results.md (hooked into ``benchmarks/report.py``) from the raw records in benchmarks/results/*.jsonl
(the latest record per configuration).

    python benchmarks/speed_tables.py [step|mupc|bf16|dispatch]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _records(name: str) -> list[dict]:
    path = RESULTS / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []


def step_table(records=None) -> str:
    records = _records("step_speed") if records is None else records
    latest = {(r["net"], r["T"]): r for r in records}
    out = ["| network | T | implementation | ms (median) | ratio to hand-written scan | "
           "ratio to hand-written unrolled | rounds |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for (net, T), r in sorted(latest.items()):
        for k, s in r["results"].items():
            bold = "**" if k == "pcgraph" else ""
            out.append(f"| {net} | {T} | {k} | {s['ms_median']:.0f} | {bold}{s['ratio_median']:.3f}"
                       f"{bold} | {bold}{s['ratio_to_unrolled_median']:.3f}{bold} | "
                       f"{s['rounds']} |")
    return "\n".join(out)


def mupc_table(records=None) -> str:
    records = _records("mupc_speed") if records is None else records
    latest = {(r["width"], r["depth"]): r for r in records}
    out = ["| width | H = T | implementation | ms (median) | compile s | ratio to per-layer "
           "hand-written | rounds |", "| ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for (N, H), r in sorted(latest.items()):
        for k, s in r["results"].items():
            out.append(f"| {N} | {H} | {k} | {s['ms_median']:.1f} | {s['compile_s']:.1f} | "
                       f"{s['ratio_median']:.3f} | {s['rounds']} |")
    return "\n".join(out)


WORKLOADS = {"digits": "digits MLP (64 → 64 → 64 → 10, T = 10, batch 64)",
             "mupc": "μPC width 128, H = T = 16, batch 64"}


def dispatch_table(records=None) -> str:
    records = _records("dispatch_speed") if records is None else records
    latest = {r["work"]: r for r in records}
    out = ["| workload | steps / epoch | K (auto) | steps/s K = 1 | steps/s K = auto | "
           "throughput ratio (range over rounds) | rounds |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for work, r in latest.items():
        out.append(f"| {WORKLOADS.get(work, work)} | {r['steps_per_epoch']} | {r['k']} | "
                   f"{r['steps_per_s_k1']:.1f} | {r['steps_per_s_auto']:.1f} | "
                   f"**{r['ratio_median']:.2f}** ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | "
                   f"{r['rounds']} |")
    return "\n".join(out)


def bf16_table(records=None) -> str:
    from _common import ci95

    rows: dict = {}
    for r in _records("bf16_accuracy") if records is None else records:
        rows.setdefault(r["precision"], {})[r["seed"]] = r
    out = ["| precision | seeds | test accuracy % (mean ± sd) | 95 % CI half-width | "
           "ms / step (median, loaded CPU) |", "| --- | ---: | ---: | ---: | ---: |"]
    for prec in ("fp32", "bf16"):
        rs = list(rows.get(prec, {}).values())
        if not rs:
            continue
        acc = [r["test_accuracy"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else float("nan")
        out.append(f"| {prec} | {len(rs)} | {statistics.mean(acc):.2f} ± {sd:.2f} | "
                   f"{ci95(acc):.2f} | {statistics.median(r['ms_per_step'] for r in rs):.1f} |")
    seeds = sorted(set(rows.get("fp32", {})) & set(rows.get("bf16", {})))
    diff = [rows["bf16"][s]["test_accuracy"] - rows["fp32"][s]["test_accuracy"] for s in seeds]
    if diff:
        out.append("")
        out.append(f"Paired difference bf16 − fp32 per seed: "
                   f"{', '.join(f'{d:+.2f}' for d in diff)} points "
                   f"(mean {statistics.mean(diff):+.2f}).")
    return "\n".join(out)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    tables = {"step": step_table, "mupc": mupc_table, "bf16": bf16_table,
              "dispatch": dispatch_table}
    for w in sys.argv[1:] or tables:
        print(tables[w]())
        print()
