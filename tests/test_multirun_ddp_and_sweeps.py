"""Multirun + report, DDP on two CPU processes, W&B offline, every experiment and sweep file composes."""

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from calibration_lightning.report import find_runs, reported_change
from calibration_lightning.report import main as report_main
from calibration_lightning.schema import CONF_DIR, validate
from tests.helpers import ROOT, cli, wandb_offline_values

SMALL = ["dataset.split.train=16", "dataset.split.val=8", "dataset.split.test=16", "dataset.batch_size=4"]
EXPERIMENTS = sorted(
    str(p.relative_to(CONF_DIR / "experiment").with_suffix("")) for p in (CONF_DIR / "experiment").rglob("*.yaml")
)


# default_methods (a list of methods) and cft_optuna (a search space) in the fast tier; the paper's grids in `slow`
@pytest.mark.parametrize(
    "experiment",
    [e if e in ("default_methods", "cft_optuna") else pytest.param(e, marks=pytest.mark.slow) for e in EXPERIMENTS],
)
def test_every_experiment_composes_for_each_swept_value(experiment):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose("config", overrides=[f"+experiment={experiment}", "output_dir=/tmp/x"], return_hydra_config=True)
        params = base.hydra.sweeper.get("params")  # absent: an experiment that is one run
        params = OmegaConf.to_container(params) if params is not None else {}
        swept = {}
        for o in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()]):
            if o.is_discrete_sweep():
                values = list(o.sweep_string_iterator())
            elif o.is_interval_sweep():  # an Optuna search space: both ends of the interval
                values = [str(o.value().start), str(o.value().end)]
            else:
                values = [o.get_value_element_as_str()]
            swept[o.get_key_element()] = values
        # every value of every swept key once, the other keys at their first value (and all at their first)
        first = {k: values[0] for k, values in swept.items()}
        combos = [first] + [{**first, k: v} for k, values in swept.items() for v in values[1:]]
        combos = [[f"{k}={v}" for k, v in combo.items()] for combo in combos]
        for combo in combos:
            cfg = compose("config", overrides=[f"+experiment={experiment}", "output_dir=/tmp/x", *combo])
            OmegaConf.to_container(cfg, resolve=True)
            validate(cfg)
    # experiments that are not searches: a fixed list of methods, a setting switched on
    assert experiment in ("default_methods", "lr_search") or sum(len(v) for v in swept.values()) >= 5


@pytest.mark.slow
def test_multirun_and_report_table_match_metrics(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    result = cli("-m", "model=tiny", "method=none,cft,ts", *SMALL, f"hydra.sweep.dir={sweep}", forked=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert report_main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert list(dict.fromkeys(r["method"] for r in rows)) == ["none", "ts", "cft"]  # the paper's row order
    read = {str(r.path): r.sets["test"] for r in find_runs([sweep])}  # as the report reads each run (any schema)
    for row in rows:  # one per run x set x metric
        metrics = json.loads((Path(row["run"]) / "metrics.json").read_text())
        assert row["set"] == "test" and metrics["method"] == row["method"]
        assert float(row["before"]) == metrics["before"][row["metric"]]
        assert float(row["after"]) == metrics["after"][row["metric"]]
        difference, ci, _ = reported_change(read[row["run"]]["improvement"], row["metric"], float(row["level"]))
        assert float(row["difference"]) == difference
        assert [row["difference_lo"], row["difference_hi"]] == ([str(x) for x in ci] if ci else ["", ""])
        assert f"{metrics['after']['conf_ece']:.4f}" in printed
    assert (sweep / "report.md").read_text().startswith("## mmlu_bundled: test\n\n| model | method | n |")
    assert all((sweep / f"reliability.{fmt}").stat().st_size > 10_000 for fmt in ("pdf", "svg", "png"))


def test_report_without_runs_fails_clearly(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    result = cli("model=tiny", "trainer=ddp_cpu", "method=rcft", *SMALL, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["before"]["n"] == 16 and metrics["after"]["n"] == 16  # both ranks' shares gathered
    predictions = (out / "predictions_after.jsonl").read_text().splitlines()
    assert len(predictions) == 16 and len({json.loads(p)["id"] for p in predictions}) == 16
    assert (out / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_loggers_as_a_list_wandb_offline_gets_the_summary_intervals_and_diagrams(tmp_path):
    """``logger=[csv,wandb,tensorboard,mlflow]``: the CSV log, an offline W&B run whose summary holds metrics.json's
    numbers (before, after, the change, the intervals, the objective) and the diagrams, TensorBoard events and an
    MLflow run; no network, and the W&B key written nowhere."""
    out = tmp_path / "wb"
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "wandb-secret-k3y", "WANDB_SILENT": "true"}
    result = cli(
        "model=tiny", "logger=[csv,wandb,tensorboard,mlflow]", *SMALL, f"hydra.run.dir={out}", env=env, forked=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    (run,) = (out / "wandb").glob("offline-run-*")
    summary = wandb_offline_values(run)
    level = next(k for k in metrics["after"] if k.startswith("ci"))
    for key, value in {
        "before/test/conf_ece": metrics["before"]["conf_ece"],
        "after/test/accuracy": metrics["after"]["accuracy"],
        "after/test/accuracy_lo": metrics["after"][level]["accuracy"][0],
        "change/test/nll": metrics["improvement"]["nll"]["difference"],
        "objective": metrics["objective"],
    }.items():
        assert summary[key] == pytest.approx(value), key
    assert any(run.rglob("reliability_test*.png")) and (out / "logs" / "metrics.csv").exists()
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("calibration_lightning").experiment_id])
    assert mlflow_run.data.metrics["objective"] == pytest.approx(metrics["objective"])
    assert [p.name for p in (out / "mlflow_artifacts").rglob("*.png")] == ["reliability_test.png"]  # in the run
    for path in out.rglob("*"):
        if path.is_file():
            assert b"wandb-secret-k3y" not in path.read_bytes(), path


@pytest.mark.parametrize("sweep", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_sweep_files_call_hydra_with_keys_that_exist_and_a_logged_metric(sweep):
    import yaml

    spec = yaml.safe_load(sweep.read_text())
    assert "${args_no_hyphens}" in spec["command"] and spec["command"][2:4] == ["-m", "calibration_lightning"]
    assert spec["metric"]["name"] == "objective"  # optimized_metric's value, logged by every run (loggers.py)
    fixed = [c for c in spec["command"] if "=" in c and not c.startswith("$")]
    values = {k: (v.get("values") or [v.get("min")])[0] for k, v in spec["parameters"].items()}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*fixed, "output_dir=/tmp/x", *(f"{k}={v}" for k, v in values.items())])
    validate(cfg)
