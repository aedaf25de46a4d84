"""Config mistakes, refused runs and sweeps, hub failures and too-small splits end as one ``error:`` line with
exit 2, before any model loads and without touching an existing run directory; secrets on the command line are
hidden."""

import csv
import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from calibration_lightning.errors import ConfigError, DataError
from calibration_lightning.outputs.csv_logger import ResumableExperimentWriter
from calibration_lightning.outputs.run_outputs import redacted_config
from calibration_lightning.recipe import run
from calibration_lightning.redaction import hide_secret_overrides
from tests.helpers import call_main, cli

HINT = "`python -m calibration_lightning --cfg job` shows every key and `--help` the options of each group"
GOOD = '{"question": "2 + 2 = ?", "choices": ["3", "4"], "answer": 1}\n'


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["method.optim.lrr=0.1"],
            "method.optim.lrr: no such key; did you mean method.optim.lr? "
            "(`python -m calibration_lightning --cfg job` lists every key)",
        ),
        (
            ["trainer.max_epoch=3"],
            "trainer.max_epoch: no such key; did you mean trainer.max_epochs or trainer.min_epochs or "
            "trainer.max_steps? "
            "(`python -m calibration_lightning --cfg job` lists every key)",
        ),
        (
            ["trainer.max_time=00:00:01:00"],
            "trainer.max_time: a Lightning Trainer argument the trainer config does not set; add it with "
            "+trainer.max_time=VALUE",
        ),
        (
            ["model=tiny", "+trainer.max_epoch=3"],
            "trainer.max_epoch=3: not a Lightning Trainer argument; did you mean trainer.max_epochs or "
            "trainer.min_epochs or trainer.max_steps?",
        ),
        (["model=tiny", "+foo=1"], "foo: no such key (`python -m calibration_lightning --cfg job` lists every key)"),
        (
            ["method=rcf"],
            "In 'config': Could not find 'method/rcf'. "
            f"Available options in 'method': auto, cft, label_smoothing, none, rcft, ts; {HINT}",
        ),
        (
            ["--cfg", "job", "logger=foo"],
            "In 'config': Could not find 'logger/foo'. Available options in 'logger': "
            f"csv, mlflow, none, tensorboard, wandb; {HINT}",
        ),
        (
            ["-m", "model=tiny", "method=cft,rcfx"],
            "In 'config': Could not find 'method/rcfx'. "
            f"Available options in 'method': auto, cft, label_smoothing, none, rcft, ts; {HINT}",
        ),
        (
            ["n_bins=abc"],
            f"Error merging override n_bins=abc (Value 'abc' of type 'str' could not be converted to Integer); {HINT}",
        ),
        (
            ["model.quantize=int3"],
            "Error merging override model.quantize=int3 (Invalid value 'int3', expected one of [auto, nf4, none]); "
            + HINT,
        ),
        (
            ["method.optim.scheduler=linear"],
            "Error merging override method.optim.scheduler=linear (Invalid value 'linear', expected one of "
            f"[cosine, constant]); {HINT}",
        ),
        (["model=tiny", "n_bins=1"], "n_bins=1: bins must be an integer >= 2"),
        (["model=tiny", "dataset.max_length=4"], "dataset.max_length=4: must be an integer >= 8"),
        (["model=tiny", "bootstrap.level=1.5"], "bootstrap.level=1.5: must be in (0, 1), e.g. 0.95"),
        (
            ["model=tiny", "trainer.checkpoint_every_n_steps=-1"],
            "trainer.checkpoint_every_n_steps=-1: must be an integer >= 0",
        ),
        (["model=tiny", "model.lora.r=0"], "model.lora.r=0: the LoRA rank must be an integer >= 1"),
        (["model=tiny", "method.epochs=0"], "method.epochs=0: must be an integer >= 1"),
        (
            ["-m", "model=tiny", "method=cft,rcft", "method.optim.lr=-1"],
            "method.optim.lr=-1.0: the learning rate must be > 0",
        ),
        (
            ["model=tiny", "method=rcft", "method.callbacks.0.every=0"],
            "method.callbacks EStepRefresh.every=0: allowed: epoch, once, or an integer >= 1",
        ),
        (["model=tiny", "method=rcft", "method.loss.lam=-0.5"], "method.loss.lam=-0.5: must be >= 0"),
        (
            ["model=tiny", "method=rcft", "method.accuracy_z=-1", "method.loss.lam=-2", "dataset.prompt.template=x"],
            "3 problems in the config: (1) method.accuracy_z=-1.0: must be null or a number >= 0; "
            "(2) dataset.prompt.template='x': must contain {question} and {choices} (and may {about}), nothing else; "
            "(3) method.loss.lam=-2: must be >= 0",
        ),
    ],
)
def test_config_mistakes_are_one_line_before_hydra_runs(argv, message, tmp_path):
    result = call_main(*argv, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n")
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_help_names_the_program_and_lists_only_real_options():
    result = call_main("--help")
    assert result.returncode == 0 and result.stdout.startswith("calibration_lightning: "), result.stdout[:200]
    groups = result.stdout.split("== Option groups ==\n")[1].split("\n\n")[0].splitlines()
    assert [g.split(":")[0] for g in groups] == [
        "dataset", "experiment", "judge", "logger", "method", "model", "trainer", "win_rate"
    ]  # fmt: skip
    assert "model: hf, mistral7b, olmo2_7b, smollm2_135m, tiny, tulu3_8b, vicuna7b" in groups
    assert "__main__" not in result.stdout and not any("_base" in g or ": _" in g or " _" in g for g in groups)


@pytest.mark.slow
def test_cfg_and_a_good_sweep_pass_the_checks(tmp_path):
    shown = call_main("--cfg", "job", "model=tiny")
    assert shown.returncode == 0 and "name: tiny" in shown.stdout and shown.stderr == ""
    small = ["dataset.split.train=0", "dataset.split.val=8", "dataset.split.test=8", "logger=none"]
    sweep = call_main(
        "-m", "model=tiny", "method=none,ts", *small, "bootstrap.resamples=0", f"hydra.sweep.dir={tmp_path}"
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert sorted(p.parent.name for p in tmp_path.glob("*/metrics.json")) == ["0_tiny_none", "1_tiny_ts"]
    assert (tmp_path / "0_tiny_none" / "calibration_lightning.log").exists()


def _finished_run(path: Path) -> dict[str, bytes]:
    (path / ".hydra").mkdir(parents=True)
    (path / "metrics.json").write_text('{"after": {}}\n')
    (path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (path / ".hydra" / "overrides.yaml").write_text("- model=tiny\n")
    (path / "calibration_lightning.log").write_text("[finished]\n")
    return _snapshot(path)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_refused_runs_leave_a_finished_run_untouched(tmp_path):
    """Through the CLI: exit 2, one error line, no traceback, and the finished run's .hydra/ and log unchanged."""
    out = tmp_path / "done"
    before = _finished_run(out)
    cases = {
        "method.optim.lrr=0.1": "error: method.optim.lrr: no such key",
        "trainer.checkpoint_every_n_steps=-1": "error: trainer.checkpoint_every_n_steps=-1: must be an integer >= 0",
        "seed=1": f"error: {out} already holds a finished run (metrics.json); choose another hydra.run.dir",
    }
    for override, start in cases.items():
        result = call_main("model=tiny", override, f"hydra.run.dir={out}")
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and errors[0].startswith(start), result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        assert _snapshot(out) == before


def test_unfinished_run_is_refused_before_hydra_writes(tmp_path):
    out = tmp_path / "killed"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"x")
    result = call_main("model=tiny", f"hydra.run.dir={out}")
    assert result.returncode == 2 and "holds an unfinished run (checkpoints/); pass resume=true" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]


def test_sweep_with_one_bad_data_file_is_refused_before_its_first_job(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(GOOD * 10)
    bad.write_text(GOOD + '{"question": "q", "choices": ["a"], "answer": 0}\n')
    sweep = tmp_path / "sweep"
    result = call_main(
        "-m", "model=tiny", "method=none", "dataset=jsonl", f"dataset.path={good},{bad}", f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 2 and result.stderr.startswith(f"error: {bad}: line 2: field 'choices' has 1 options")
    assert len(result.stderr.splitlines()) == 1 and not sweep.exists()  # job 0 (the good file) never started


def test_refused_sweep_leaves_a_finished_job_untouched(tmp_path):
    """A sweep run again into the same folder: job 0 finished there, job 1 has a bad setting; nothing of job 0
    (its .hydra/, log, metrics) is rewritten, and the sweep's multirun.yaml is not written."""
    sweep = tmp_path / "sweep"
    finished = _finished_run(sweep / "0_tiny_none")
    result = call_main("-m", "model=tiny", "method=none,ts", "regime.tolerance=2", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2 and result.stderr == "error: regime.tolerance=2.0: must be in [0, 1]\n"
    again = call_main("-m", "model=tiny", "method=none,ts", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 2 and again.stderr.startswith(f"error: {sweep}/0_tiny_none already holds a finished")
    assert _snapshot(sweep / "0_tiny_none") == finished and sorted(p.name for p in sweep.iterdir()) == ["0_tiny_none"]


@pytest.mark.parametrize(
    ("rows", "overrides", "message", "found"),
    [  # the default split is 60 / 20 / 20 % of the file, rounded down
        (2, [], "dataset.split.val: the val split is empty, and method=cft fits or chooses on it", "1, 0, 0"),
        (2, ["method=none"], "dataset.split.test: the test split is empty, and method=none reports on it", "1, 0, 0"),
        (60, ["dataset.split.test=0"], "dataset.split.test: the test split is empty, and method=cft", "36, 12, 0"),
        (
            60,
            ["dataset.split.val=0", "method=auto"],
            "dataset.split.val: the val split is empty, and method=auto",
            "36, 0, 12",
        ),
    ],
)
def test_too_small_splits_are_refused_with_the_sizes_found(rows, overrides, message, found, make_cfg, tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text(
        "".join(json.dumps({"question": f"q{i}", "choices": ["a", "b"], "answer": 0}) + "\n" for i in range(rows))
    )
    cfg = make_cfg("model=tiny", "dataset=jsonl", f"dataset.path={path}", *overrides)
    with pytest.raises(ConfigError) as caught:
        run(cfg)
    text = str(caught.value)
    train, val, test = found.split(", ")
    assert text.startswith(message) and f" (found train={train}, val={val}, test={test}); " in text, text
    assert text.endswith("a count > 0 or a fraction (or use a larger data file)")
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.fixture()
def offline_hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def test_hub_model_not_reachable_names_what_was_tried(offline_hub, monkeypatch, tmp_path):
    from calibration_lightning.models.sources import pretrained

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        pretrained("nobody/no-such-model")
    assert str(caught.value) == (
        "model.loader.name_or_path=nobody/no-such-model: cannot download nobody/no-such-model from the Hugging Face "
        "hub (HF_HUB_OFFLINE=1 forbids downloads), and it is not in the cache; tried the folder "
        f"{tmp_path}/nobody/no-such-model (none), the Hugging Face cache {offline_hub} and the hub; check the network "
        "or the proxy, set HF_TOKEN for a gated or private model, or pass a local model folder: "
        "model.loader.name_or_path=/path/to/model"
    )


def test_model_folder_missing_or_empty(offline_hub, tmp_path):
    from calibration_lightning.models.sources import pretrained

    with pytest.raises(ConfigError, match=f"^model.loader.name_or_path={tmp_path}/none: no such folder"):
        pretrained(f"{tmp_path}/none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"the folder {tmp_path}/empty holds no model \\(no config.json\\)"):
        pretrained(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="a/b/c: neither an existing folder .* nor a hub id ORG/NAME"):
        pretrained("a/b/c")


@pytest.mark.slow
def test_hub_model_error_through_the_cli(tmp_path):
    """The design card's command on a machine without the model: one line, exit 2, no traceback."""
    result = cli("model=mistral7b", "method=rcft", f"hydra.run.dir={tmp_path}/run", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in result.stderr.splitlines() if line.strip()]  # nothing but the error line
    assert errors[0].startswith(
        "error: model.loader.name_or_path=HuggingFaceH4/zephyr-7b-beta: cannot download HuggingFaceH4/zephyr-7b-beta "
        "from the Hugging Face hub (HF_HUB_OFFLINE=1 forbids downloads), and it is not in the cache"
    ), errors


def test_hub_dataset_not_reachable(offline_hub):
    from calibration_lightning.data.hub import split_files

    with pytest.raises(DataError) as caught:
        split_files("nobody/no-such-data", ["all/test-*.parquet"])
    assert str(caught.value) == (
        "cannot download nobody/no-such-data from the Hugging Face hub (HF_HUB_OFFLINE=1 forbids downloads, and it "
        f"is not in the cache {offline_hub}); check the network or HF_TOKEN, or pass the dataset's data_dir= "
        "(e.g. dataset.source.data_dir=FOLDER) to a local copy laid out like the hub"
    )


def test_secret_overrides_move_to_the_environment(monkeypatch):

    for var in [k for k in os.environ if k.startswith("CALIBRATION_LIGHTNING_SECRET_")]:
        monkeypatch.delenv(var)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the variables set here vanish after the test
    argv = ["-m", "+judge.api_key=sk-abc", "win_rate.max_new_tokens=8", "+x.hf_token=123", "seed=1,2", "--cfg", "job"]
    assert hide_secret_overrides(argv) == [
        "-m",
        "+judge.api_key='${oc.env:CALIBRATION_LIGHTNING_SECRET_0}'",
        "win_rate.max_new_tokens=8",
        "+x.hf_token='${oc.decode:${oc.env:CALIBRATION_LIGHTNING_SECRET_1}}'",
        "seed=1,2",
        "--cfg",
        "job",
    ]
    assert os.environ["CALIBRATION_LIGHTNING_SECRET_0"] == "sk-abc"
    assert os.environ["CALIBRATION_LIGHTNING_SECRET_1"] == "123"
    cfg = OmegaConf.create({"judge": {"api_key": "${oc.env:CALIBRATION_LIGHTNING_SECRET_0}"}})
    assert cfg.judge.api_key == "sk-abc"  # the run still sees the value
    shown = call_main("--cfg", "job", "model=tiny", "+judge.api_key=sk-abc")
    assert shown.returncode == 0 and "sk-abc" not in shown.stdout + shown.stderr
    assert "api_key: ${oc.env:CALIBRATION_LIGHTNING_SECRET_" in shown.stdout


def test_redaction_covers_secret_names_only():
    cfg = OmegaConf.create(
        {
            "judge": {"api_key": "sk-1", "api_key_env": "OPENAI_API_KEY", "password": ""},
            "hf_token": "hf_2",
            "win_rate": {"max_new_tokens": 64},
            "model": {"tokenizer": "x"},
        }
    )
    assert redacted_config(cfg) == (
        "judge:\n  api_key: <redacted>\n  api_key_env: OPENAI_API_KEY\n  password: ''\nhf_token: <redacted>\n"
        "win_rate:\n  max_new_tokens: 64\nmodel:\n  tokenizer: x\n"
    )


def test_resumed_csv_log_keeps_the_rows_before_the_kill(tmp_path):
    """The resumed run logs again the "before" evaluation (step 0) and the steps after its checkpoint (30, 40):
    each replaces its earlier row in place; auto's first candidate (the first steps 10, 20) is kept whole."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    old = [("0", "", "0.3"), *((s, v, "") for s, v in [("10", "0.9"), ("20", "0.8"), ("10", "0.7"), ("20", "0.6")])]
    old += [("30", "0.5", ""), ("40", "0.4", "")]
    (log_dir / "metrics.csv").write_text("step,test/ece,train/loss\n" + "".join(f"{s},{e},{v}\n" for s, v, e in old))
    writer = ResumableExperimentWriter(str(log_dir), keep=True)
    for metrics, step in (({"test/ece": 0.25}, 0), ({"train/loss": 0.55}, 30), ({"train/loss": 0.45}, 40)):
        writer.log_metrics(metrics, step)
        writer.save()
    writer.log_metrics({"val/ece": 0.1}, 40)
    writer.save()
    with open(log_dir / "metrics.csv", newline="") as f:
        rows = [(r["step"], r["test/ece"], r["train/loss"], r["val/ece"]) for r in csv.DictReader(f)]
    assert rows == [
        ("0", "0.25", "", ""),
        ("10", "", "0.9", ""),
        ("20", "", "0.8", ""),
        ("10", "", "0.7", ""),
        ("20", "", "0.6", ""),
        ("30", "", "0.55", ""),
        ("40", "", "0.45", ""),
        ("40", "", "", "0.1"),
    ]


def test_a_new_run_starts_a_new_csv_log(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,train/loss\n3,1.0\n")
    writer = ResumableExperimentWriter(str(tmp_path), keep=False)
    writer.log_metrics({"train/loss": 2.0}, 5)
    writer.save()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,train/loss", "5,2.0"]


@pytest.mark.slow
def test_a_run_reads_its_data_once(tmp_path):
    """The start-up checks read the data before Hydra writes anything; the run uses what they read."""
    from tests import helpers

    data = tmp_path / "d.jsonl"
    data.write_text(GOOD * 12)
    helpers.READS.clear()
    small = ["dataset.split.train=0", "dataset.split.val=0", "dataset.split.test=4", "logger=none"]
    result = call_main(
        "model=tiny", "method=none", "dataset=jsonl", f"dataset.path={data}", *small, "bootstrap.resamples=0",
        "dataset.source._target_=tests.helpers.counted_records", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert helpers.READS == [str(data)] and (tmp_path / "run" / "metrics.json").exists()
