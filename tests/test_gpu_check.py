"""`make gpu-check` at the tiny shape on the CPU: every step of the GPU check runs and checks what it claims."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
@pytest.mark.gpu_check  # 2-5 minutes: out of `make test`; `make gpu-check ARGS=--cpu-dry-run` before a GPU session
def test_gpu_check_cpu_dry_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--cpu-dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,  # about 2 minutes on 2 idle cores; much longer on a shared, loaded machine
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = report["steps"]
    assert list(steps) == ["environment", "cli_runs", "twins", "resume", "merge", "bench", "levers"]
    assert all(s["ok"] for s in steps.values()) and report["ok"]
    runs = steps["cli_runs"]["runs"]
    assert set(runs) == {"cft_default", "rcft_bf16_compile", "rcft_bf16", "ts", "label_smoothing", "ddp_rcft",
                         "fsdp_cft_bf16", "resume_reference", "twin_bf16_gpu", "twin_cpu"}  # fmt: skip
    assert runs["fsdp_cft_bf16"]["skipped"]  # Lightning's FSDP needs CUDA
    for name, r in runs.items():
        if "skipped" not in r:
            assert r["returncode"] == 0 and r["max_diff_vs_recomputed"] <= 1e-5, name
    # The E-step under DDP (gloo here, NCCL on a GPU) gives what the single-process run gives.
    assert runs["ddp_rcft"]["conf_ece_after"] == runs["rcft_bf16_compile"]["conf_ece_after"]
    resume = steps["resume"]
    assert resume["killed_at_step"] >= 1 and not resume["finished_before_kill"] and resume["identical"]
    assert steps["merge"]["max_abs_diff_merged_vs_unmerged"] < 1e-5 and steps["merge"]["questions"] == 24
    bench = json.loads((tmp_path / "gpu_bench.json").read_text())
    cases = {(r["case"], r.get("checkpointing")) for r in bench["ours"]}
    assert {("train_cft", False), ("train_rcft", True), ("score_trained", None)} <= cases
    assert all(r["tokens_per_s"] > 0 for r in bench["ours"])
    assert (tmp_path / "gpu_check.log").read_text().count("=====") >= 2
    # The bf16 twin against the float32 one: both tables, and the largest metric gap named and bounded.
    twins = steps["twins"]
    assert set(twins["tables"]) == {"twin_bf16_gpu", "twin_cpu"}
    gap = twins["largest_difference"]
    cpu, bf16 = twins["tables"]["twin_cpu"], twins["tables"]["twin_bf16_gpu"]
    phase, metric = gap["metric"].split(".")
    assert gap["abs"] == abs(bf16[phase][metric] - cpu[phase][metric]) and 0 < gap["abs"] < 0.5
    assert steps["levers"]["ok"] and (tmp_path / "lever_probe.json").exists()
