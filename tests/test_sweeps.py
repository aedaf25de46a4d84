"""Every choice on validation: no shipped sweep or experiment optimises a test metric, the value a sweep
optimises is the after-training validation conf-ECE, and a swept key is never one the default overrides."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from calibration_lightning.calibration.metrics import METRICS
from calibration_lightning.schema import CONF_DIR
from tests.conftest import TINY_SPLIT

ROOT = CONF_DIR.parent
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
CONFIGS = sorted((CONF_DIR / "experiment").rglob("*.yaml")) + sorted((CONF_DIR / "hydra" / "sweeper").glob("*.yaml"))
VALIDATION_METRICS = {f"val/{name}" for name in METRICS} | {"objective"}  # objective: optimized_metric, a val one


def _strings(node, path=""):
    """Every (key path, string value) pair in a YAML tree, keys included as values."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, str(k)
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def test_the_shipped_files_are_found():
    assert len(SWEEPS) >= 3 and any(p.parent.name == "sweeper" for p in CONFIGS)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_no_wandb_sweep_optimises_a_test_metric(path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["metric"]["name"] in VALIDATION_METRICS, f"{path.name} optimises {sweep['metric']['name']}"
    assert not [s for _, s in _strings(sweep) if s.startswith("test/")], f"{path.name} names a test metric"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_no_experiment_or_sweeper_config_names_a_test_metric(path):
    # Hydra sweepers optimise the task's return value (checked below); a config that names a test metric
    # (as an objective, a monitor, a direction's target) would choose on test.
    named = [f"{where}: {s}" for where, s in _strings(yaml.safe_load(path.read_text()) or {}) if "test/" in s]
    assert not named, f"{path.relative_to(CONF_DIR)} names a test metric: {named}"


# Keys a sweep must not vary while another key of the composed config overrides them.
DOMINATED = {
    "method.optim.warmup_ratio": ("method.optim.warmup_steps", "warmup_steps overrides warmup_ratio"),
    "method.optim.lr": ("method.lr_search", "the run's own lr search replaces method.optim.lr"),
}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node.get(part) if node is not None else None
    return node


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_no_sweep_varies_a_key_the_run_overrides(path):
    sweep = yaml.safe_load(path.read_text())
    overrides = [a for a in sweep["command"] if "=" in a and not a.startswith("$")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    for key in sweep["parameters"]:
        assert _get(cfg, key) is not None or key.startswith("model.lora"), f"{path.name}: {key} is not a config key"
        if key in DOMINATED:
            other, why = DOMINATED[key]
            assert _get(cfg, other) is None, f"{path.name} sweeps {key} but {other} is set ({why})"


def _logged(out: Path, key: str) -> list[float]:
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").open()))
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.slow
def test_a_run_returns_its_optimized_metric_after_training_as_its_objective(tiny_run):
    out = tiny_run("cft")
    metrics = json.loads((out / "metrics.json").read_text())
    logged = _logged(out, "val/nll")  # optimized_metric's default
    assert metrics["objective"] == pytest.approx(logged[-1], abs=1e-6)  # the last val/nll: after training
    assert metrics["objective"] != pytest.approx(metrics["after"]["nll"], abs=1e-6)  # not the test split's


@pytest.mark.slow
def test_local_optuna_sweep_minimises_the_validation_metric(tmp_path):
    """Two trials of the shipped Optuna study on the tiny model, optimising a chosen metric (validation Brier):
    the best value it reports is the lower of the trials' after-training validation Brier (logged by each run),
    not a test metric."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cmd = [
        sys.executable,
        "-m",
        "calibration_lightning",
        "-m",
        "+experiment=cft_optuna",
        "model=tiny",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.sweep.subdir=${hydra.job.num}",
        "method.epochs=1",
        "method.select=null",
        "bootstrap.resamples=0",
        "trainer.enable_progress_bar=false",
        "optimized_metric=val/brier",
        *TINY_SPLIT,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())["best_value"]
    trials = [p for p in tmp_path.iterdir() if (p / "metrics.json").exists()]
    assert len(trials) == 2
    validation = [_logged(p, "val/brier")[-1] for p in trials]
    test = [json.loads((p / "metrics.json").read_text())["after"]["brier"] for p in trials]
    assert best == pytest.approx(min(validation), abs=1e-6)
    assert all(best != pytest.approx(t, abs=1e-6) for t in test)
