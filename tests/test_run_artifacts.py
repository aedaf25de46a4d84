"""The artifacts of a run folder that a resumed run reads back, damaged: checkpoints with Lightning's keys but bogus
values, or trained with other settings, data or weights (their fingerprint), a damaged ``logs/metrics.csv``; the
printed resume command for any folder name; over-long paths. Each is one ``error:`` line naming the file or key,
before any model loads."""

import shlex

import pytest
import torch
from omegaconf import OmegaConf

from calibration_lightning.data.records import MCRecord
from calibration_lightning.data.splits import Splits
from calibration_lightning.errors import UserError
from calibration_lightning.models.sources import tiny
from calibration_lightning.outputs.checkpoints import check_checkpoints
from calibration_lightning.outputs.csv_logger import ResumableExperimentWriter, read_metrics_log
from calibration_lightning.outputs.fingerprint import fingerprint
from calibration_lightning.outputs.run_state import Preempted, resume_hint
from tests.conftest import TINY_SPLIT, compose_config
from tests.helpers import call_main

START_OVER = "delete {} and rerun without resume=true to train from the start"


SHAPES = {"model.q_proj.lora_A.default.weight": (8, 64), "model.q_proj.lora_B.default.weight": (64, 8)}
SPLITS = Splits(*([MCRecord(f"{split}{i}", f"question {i}?", ("a", "b"), i % 2) for i in range(4)] for split in "tvs"))


@pytest.fixture(scope="module")
def print_(tiny_source) -> dict:
    """The fingerprint of a run of the tiny model on ``SPLITS`` with the default settings."""
    return fingerprint(compose_config("model=tiny"), SPLITS, {}, tiny_source, None)


def _ckpt(fingerprint: dict | None = None, **change) -> dict:
    """A checkpoint as the run writes it (the keys a resume reads), with ``change``."""
    good = {
        "fingerprint": fingerprint or {},
        "state_dict": {**{k: torch.zeros(s) for k, s in SHAPES.items()}, "loss_head.scale": torch.ones(1)},
        "epoch": 1,
        "global_step": 8,
        "pytorch-lightning_version": "2.6.6",
        "loops": {"fit_loop": {"state_dict": {}}},
        "callbacks": {},
        "optimizer_states": [{"state": {}, "param_groups": []}],
        "lr_schedulers": [],
    }
    return {k: v for k, v in {**good, **change}.items() if v is not ...}


def _run_dir(tmp_path, **checkpoints):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for name, ckpt in checkpoints.items():
        torch.save(ckpt, out / "checkpoints" / f"{name}.ckpt")
    return out


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"pytorch-lightning_version": ...}, "no pytorch-lightning_version"),
        ({"pytorch-lightning_version": "banana"}, "pytorch-lightning_version is 'banana', not a version"),
        ({"epoch": "1"}, "epoch is '1', expected an integer >= 0"),
        ({"global_step": -3}, "global_step is -3, expected an integer >= 0"),
        ({"epoch": True}, "epoch is True, expected an integer >= 0"),
        ({"state_dict": []}, "state_dict is [], expected a dict"),
        ({"state_dict": {"model.w": "abc"}}, "state_dict['model.w'] is not a tensor"),
        ({"callbacks": None}, "callbacks is None, expected a dict"),
        ({"loops": {}}, "loops holds no fit_loop state"),
        ({"optimizer_states": [1]}, "optimizer_states holds something other than optimizer states"),
        ({"lr_schedulers": ..., "callbacks": ...}, "no callbacks, lr_schedulers"),
    ],
)
def test_a_checkpoint_with_bogus_values_is_one_error(tmp_path, change, problem):
    out = _run_dir(tmp_path, last=_ckpt(**change))
    with pytest.raises(UserError) as caught:
        check_checkpoints(out)
    assert str(caught.value) == (
        f"{out / 'checkpoints' / 'last.ckpt'}: not a checkpoint this program can resume from ({problem}); "
        + START_OVER.format(out / "checkpoints")
    )


def test_best_ckpt_needs_only_what_is_read_from_it(tmp_path, print_):
    best = {"fingerprint": print_, "state_dict": _ckpt()["state_dict"], "epoch": 2}
    check_checkpoints(_run_dir(tmp_path, last=_ckpt(print_), best=best), print_)
    with pytest.raises(UserError, match=r"best.ckpt: not a checkpoint .* \(a list, not a dict\)"):
        check_checkpoints(_run_dir(tmp_path / "b", best=[1, 2]))


def test_a_checkpoint_trained_with_other_settings_data_or_weights_names_each_difference(tmp_path, tiny_source, print_):
    other_data = Splits(SPLITS.train, SPLITS.val, [*SPLITS.test[:3], MCRecord("s3", "question 3?", ("a", "c"), 1)])
    other_model = tiny(hidden_size=32)  # other weights, and the loader's hidden_size
    cases = {
        "model.lora.r: 8 there, 4 now": fingerprint(compose_config("model=tiny", "model.lora.r=4"), SPLITS, {},
                                                   tiny_source, None),
        "the test questions differ": fingerprint(compose_config("model=tiny"), other_data, {}, tiny_source, None),
        "the model's weight files differ": fingerprint(compose_config("model=tiny"), SPLITS, {}, other_model, None),
        "bootstrap.resamples: 1000 there, 200 now": fingerprint(compose_config("model=tiny", "bootstrap.resamples=200"),
                                                                SPLITS, {}, tiny_source, None),
    }  # fmt: skip
    out = _run_dir(tmp_path, last=_ckpt(print_))
    for difference, now in cases.items():
        with pytest.raises(UserError) as caught:
            check_checkpoints(out, now)
        assert str(caught.value).startswith(f"resume=true: {out / 'checkpoints' / 'last.ckpt'} was trained with "
                                            "other settings or data (") and difference in str(caught.value)  # fmt: skip
    check_checkpoints(out, fingerprint(compose_config("model=tiny", "resume=true", "trainer.log_every_n_steps=1",
                                                      "logger=none"), SPLITS, {}, tiny_source, None))  # fmt: skip


METRICS = "epoch,step,train/loss\r\n0,3,0.9\r\n0,7,0.8\r\n"
MOVE = "move it aside (mv {0} {0}.damaged) and rerun with resume=true: a new log starts, the old rows stay there"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (METRICS.encode() + b"0,9,\xff\xfe\r\n", "line 4: not UTF-8 text (byte 45)"),
        (METRICS.encode() + b"0,9,0.7,0.1\r\n", "line 4: 4 cells under a header of 3"),
        ((METRICS + '0,9,"0.7\r\n1,10,0.6\r\n').encode(), "line 5: not valid CSV (unexpected end of data)"),
        (None, "a folder where the metrics log should be"),
    ],
)
def test_a_damaged_metrics_log_is_refused_at_start_up_and_left_as_it_is(tmp_path, content, problem):
    out = _run_dir(tmp_path, last=_ckpt())
    log = out / "logs" / "metrics.csv"
    log.parent.mkdir()
    log.mkdir() if content is None else log.write_bytes(content)
    with pytest.raises(UserError) as caught:
        check_checkpoints(out)
    assert str(caught.value) == f"{log}: {problem}; {MOVE.format(shlex.quote(str(log)))}"
    assert log.is_dir() if content is None else log.read_bytes() == content  # no row lost


def test_a_metrics_log_cut_by_a_kill_keeps_its_whole_rows(tmp_path, caplog):
    log = tmp_path / "metrics.csv"
    log.write_bytes((METRICS + "0,11,0.6").encode())  # the last row was being written when the run was killed
    rows = [{"epoch": "0", "step": "3", "train/loss": "0.9"}, {"epoch": "0", "step": "7", "train/loss": "0.8"}]
    assert read_metrics_log(log) == (["epoch", "step", "train/loss"], rows, True)
    writer = ResumableExperimentWriter(str(tmp_path), keep=True)
    assert "its last line was cut short by the interruption: left out" in caplog.text
    writer.log_metrics({"train/loss": 0.55}, 11)  # the resumed run logs that step again
    writer.save()
    assert _raw(log) == METRICS + ",11,0.55\r\n"


def test_a_metrics_log_with_a_header_only_resumes(tmp_path):
    (tmp_path / "metrics.csv").write_bytes(b"epoch,step,train/loss\r\n")
    writer = ResumableExperimentWriter(str(tmp_path), keep=True)
    writer.log_metrics({"val/nll": 1.5}, 4)
    writer.save()
    assert _raw(tmp_path / "metrics.csv") == "epoch,step,train/loss,val/nll\r\n,4,,1.5\r\n"


def _raw(path) -> str:
    with open(path, newline="") as f:  # as written: Lightning ends CSV lines with CRLF
        return f.read()


@pytest.mark.parametrize("name", ["run", "my run", "a,b=c", "it's", "[x]", "$HOME", "${oc.env:X}", "tab\there", "é"])
def test_the_printed_resume_command_gives_hydra_the_folder_back(tmp_path, name):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = tmp_path / name
    hint = resume_hint(out, Preempted(15))
    words = shlex.split(hint.split("run the same command with ", 1)[1])
    assert words[0] == "resume=true" and len(words) == 2
    value = OverridesParser.create().parse_override(words[1]).value()
    assert OmegaConf.create({"dir": value}).dir == str(out)
    if name == "run":
        assert hint.endswith(f"resume=true hydra.run.dir={out}")  # a plain path stays as typed


def _bogus_checkpoint(run):
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "loops": {}}, run / "checkpoints" / "last.ckpt")
    return ["resume=true"]


def _bad_adapter_config(run):
    (run.parent / "adapter").mkdir()
    (run.parent / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": "abc"}')
    (run.parent / "adapter" / "adapter_model.bin").write_bytes(b"")
    return [f"model.adapter={run.parent / 'adapter'}"]


def _damaged_log(run):
    (run / "checkpoints").mkdir(parents=True)
    torch.save(_ckpt(), run / "checkpoints" / "last.ckpt")
    (run / "logs").mkdir()
    (run / "logs" / "metrics.csv").write_bytes(b"step,x\n1,\xff\n")
    return ["resume=true"]


@pytest.mark.parametrize(
    ("setup", "start"),
    [
        (_bogus_checkpoint, "error: {run}/checkpoints/last.ckpt: not a checkpoint this program can resume from (no "),
        (_bad_adapter_config, "error: model.adapter={adapter}: {adapter}/adapter_config.json: r is 'abc', expected"),
        (_damaged_log, "error: {run}/logs/metrics.csv: line 2: not UTF-8 text (byte 9); move it aside"),
        (lambda run: [f"hydra.run.dir={run / ('a' * 300)}"], "error: hydra.run.dir: a name of 300 bytes (aaaa"),
        (lambda run: ["dataset=jsonl", f"dataset.path=/tmp/{'b' * 300}.jsonl"], "error: dataset.path=/tmp/bbbbbbb"),
    ],
)
def test_a_damaged_artifact_is_one_line_and_exit_2_before_any_model_loads(tmp_path, setup, start):
    run = tmp_path / "run"
    overrides = setup(run)
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        overrides.append(f"hydra.run.dir={run}")
    before = sorted(p for p in tmp_path.rglob("*"))
    result = call_main("model=tiny", "method=cft", *TINY_SPLIT, *overrides)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(start.format(run=run, adapter=tmp_path / "adapter")), result.stderr
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written
