"""The front-end fuzzer's figures (issue 13): cases, outcomes by kind, slowest input.

Runs the strategies and properties of ``tests/test_fuzz.py`` (token-level mutations of every
model in models/, generated valid models) round-robin in chunks: each round gives every model
``--chunk`` mutations and the generator ``--chunk`` models, each chunk with its own hypothesis
seed, so that a run stopped early (``--until``) still covers every model evenly. A property that
fails is recorded (kind and input) instead of stopping the run. After every chunk the figures so
far are written to ``--out`` (one JSON object), so a killed run keeps them.

    nice -n 10 python benchmarks/fuzz_report.py --cases 100000 --chunk 500 \\
        --until 04:15 --out benchmarks/results/fuzz.json
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hypothesis import given, seed, settings  # noqa: E402

import test_fuzz as fz  # noqa: E402


def _until(hhmm: str | None) -> float:
    if not hhmm:
        return float("inf")
    now = datetime.datetime.now(datetime.timezone.utc)
    h, m = map(int, hhmm.split(":"))
    end = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if end <= now:
        end += datetime.timedelta(days=1)
    return time.time() + (end - now).total_seconds()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=100_000, help="stop after this many cases")
    ap.add_argument("--chunk", type=int, default=500, help="cases per model per round")
    ap.add_argument("--until", help="UTC HH:MM: stop starting chunks after this time")
    ap.add_argument("--out", default="fuzz.json")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    os.chdir(tempfile.mkdtemp(prefix="pcg_fuzz_"))  # mutated includes resolve in an empty folder
    deadline = _until(args.until)
    failures: list[dict] = []
    per_source: collections.Counter = collections.Counter()
    t_start = time.time()

    def one(text: str, source: str) -> None:
        before = fz.FIGURES["cases"]
        try:
            fz.check_properties(text)
        except Exception as e:  # noqa: BLE001 - a failed property is a finding, recorded
            if fz.FIGURES["cases"] == before:
                fz.FIGURES["cases"] += 1
                fz.FIGURES["outcomes"]["property failed"] += 1
            failures.append({"source": source, "error": type(e).__name__,
                             "message": str(e)[:500], "input": text[:2000],
                             "where": traceback.format_exc(limit=-3)[-800:]})
        per_source[source] += 1

    def write(done: bool) -> None:
        doc = {"benchmark": "fuzz_report", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                 time.gmtime()),
               "finished": done, "wall_s": round(time.time() - t_start, 1),
               "cases": fz.FIGURES["cases"], "outcomes": dict(fz.FIGURES["outcomes"]),
               "per_source": dict(per_source), "slowest_cpu_s": fz.FIGURES["slowest_s"],
               "slowest_input": fz.FIGURES["slowest"][:2000],
               "property_failures": len(failures), "failures": failures[:50],
               "cpu_count": os.cpu_count()}
        out.write_text(json.dumps(doc, indent=1) + "\n")

    sources = [*sorted(fz.TEXTS), "<generated valid>"]
    rnd = 0
    while fz.FIGURES["cases"] < args.cases and time.time() < deadline:
        for src in sources:
            if fz.FIGURES["cases"] >= args.cases or time.time() >= deadline:
                break
            source = src
            strategy = fz.valid_models() if src.startswith("<") else fz.mutated(src)
            opts = {**fz.COMMON, "derandomize": False}

            @seed(1000 * rnd + sources.index(src))
            @settings(max_examples=args.chunk, **opts)
            @given(strategy)
            def run(text):
                one(text, source)

            run()
            write(False)
            print(f"round {rnd} {src}: {fz.FIGURES['cases']} cases, "
                  f"{len(failures)} failures, slowest {fz.FIGURES['slowest_s']:.2f} s",
                  flush=True)
        rnd += 1
    write(True)


if __name__ == "__main__":
    main()
