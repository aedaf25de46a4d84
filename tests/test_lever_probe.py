"""The lever probe's CPU dry run: the script a GPU call runs, checked here so GPU minutes go to measuring."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_lever_probe_dry_run_times_every_lever_and_agrees_on_the_loss(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/lever_probe.py", "--cpu-dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "lever_probe.json").read_text())
    assert report["dry_run"] and report["device"] == "cpu"
    rows = {r["variant"]: r for r in report["training"]["bf16"]["rows"]}
    assert set(rows) == {"plain", "ours", "ours_sync", "bf16_lora", "compile"}
    for name, row in rows.items():
        assert row["timed_steps"] == report["rounds"] * report["steps_per_round"] and row["tokens_per_s"] > 0
        # lr=0 keeps the weights fixed: every variant computes the same loss (bf16 autocast to 1e-2)
        assert row["loss_rel_diff_vs_ours"] <= (1e-2 if name == "bf16_lora" else 1e-6), name
    assert report["training"]["bf16"]["skipped"] == {"tf32": "CUDA only"}
    assert "needs CUDA" in report["liger"]["bf16"]["skipped"]
    scoring = {r["batches"]: r for r in report["scoring"]}
    assert scoring["token_budget"]["n_batches"] < scoring["fixed_count"]["n_batches"]
    assert "[lever-probe] written" in proc.stdout
