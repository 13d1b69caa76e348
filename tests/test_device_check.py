"""``benchmarks/device_check.py --smoke``: every part of the GPU check at tiny sizes on the CPU,
in a subprocess (as it runs on the device), and the report's fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")
def test_device_check_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"),
                           "--smoke", "--data", str(FASHION), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "device_check.json").read_text())
    assert r["errors"] == {}, r["errors"]
    assert r["smoke"] is True and r["device"]["backend"] == "cpu"
    assert set(r["parts"]) == {"1", "2", "3", "4"}

    p1 = r["parts"]["1"]
    assert set(p1["results"]) == {"pcgraph stack=auto", "pcgraph stack=True",
                                  "pcgraph stack=False", "hand-written per-layer",
                                  "hand-written stacked"}
    assert p1["energies_agree"] is True  # pcgraph and both hand-written steps: same energies
    assert p1["results"]["hand-written stacked"]["ratio_median"] == 1.0
    for s in p1["results"].values():
        assert s["ms_median"] > 0 and s["rounds"] >= 2 and s["compile_s"] > 0
    bw = p1["bandwidth"]
    assert bw["measured_bytes_per_s"] > 0 and bw["floor_ms_measured"] > 0
    assert bw["weight_bytes"] == 4 * (784 * 16 + 2 * 16 * 16 + 16 * 10)
    sa = p1["stack_auto"]
    assert sa["backend"] == "cpu" and sa["resolved"] == 8 and isinstance(sa["ok"], bool)

    p2 = r["parts"]["2"]
    assert set(p2["T"]) == {"2"}
    for res in p2["T"].values():
        assert {"pcgraph", "hand-written lax.scan", "hand-written unrolled"} <= set(res)

    f = r["parts"]["3"]["fp32"]
    assert f["steps"] == f["train_examples"] // 8 > 0
    assert 0 <= f["test_accuracy"] <= 100 and f["ms_per_iteration"] > 0

    p4 = r["parts"]["4"]
    assert {"μPC fp32", "μPC bf16"} <= set(p4["results"])
    assert p4["energies"]["bf16"]["dtype"] == "float32"  # energies accumulate in fp32
    assert p4["energy_start_rel_diff"] < 0.05

    md = (out / "device_check.md").read_text()
    for head in ("## 1. μPC residual step", "## 2. MLP step", "## 3. Fashion-MNIST",
                 "## 4. bf16 vs fp32"):
        assert head in md
