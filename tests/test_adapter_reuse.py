"""A saved adapter (model.adapter=PATH) evaluates and trains on; plain peft reads it the same way."""

import json

import pytest
import torch

from calibration_lightning.errors import ConfigError
from calibration_lightning.recipe import run
from tests.conftest import TINY_SPLIT
from tests.helpers import startup_check


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


pytestmark = pytest.mark.slow


@pytest.fixture()
def trained(tiny_run):
    """A finished CFT run on the tiny model; its folder."""
    return tiny_run("cft")


def test_method_none_with_the_saved_adapter_reproduces_the_after_metrics(trained, make_cfg, tmp_path):
    result = run(make_cfg("model=tiny", "method=none", f"model.adapter={trained / 'adapter'}", *TINY_SPLIT))
    saved = json.loads((trained / "metrics.json").read_text())
    for key in ("conf_ece", "cw_ece", "accuracy", "brier", "nll", "mce"):
        assert result["before"][key] == pytest.approx(saved["after"][key], abs=1e-5)
        assert result["after"][key] == result["before"][key]
    assert result["model"].endswith(f"+{trained / 'adapter'}")
    # the trained run took its after-training validation scores from the kept round's validation pass (not
    # scored again); scoring the saved adapter afresh on the validation split gives the same objective
    assert result["objective"] == pytest.approx(saved["objective"], abs=1e-5)
    ours = _rows(tmp_path / "run" / "predictions_after.jsonl")
    theirs = _rows(trained / "predictions_after.jsonl")
    for a, b in zip(ours, theirs):
        assert a["id"] == b["id"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_plain_peft_loads_our_adapter_and_gives_our_letter_probabilities(trained, tiny_source, tiny_datamodule):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_source, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(trained / "adapter")).eval()
    rows = {r["id"]: r for r in _rows(trained / "predictions_after.jsonl")}
    dm = tiny_datamodule  # the same prompts as the run (same split sizes and seed)
    checked = 0
    for record, encoded in zip(dm.records["test"], dm.encoded["test"].examples):
        if record.id not in rows:
            continue
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([encoded.input_ids])).logits[0, -1]
        k = len(record.choices)
        plain = torch.softmax(logits[dm.letter_ids[:k]].float(), dim=-1).tolist()
        ours = rows[record.id]["probabilities"]
        assert list(ours.values()) == pytest.approx(plain, abs=1e-5)
        checked += 1
    assert checked == 24


def test_training_continues_from_a_saved_adapter(trained, make_cfg, tmp_path):
    saved = json.loads((trained / "metrics.json").read_text())
    result = run(
        make_cfg("model=tiny", "method=cft", "method.select=null", f"model.adapter={trained / 'adapter'}", *TINY_SPLIT)
    )
    assert result["before"]["nll"] == pytest.approx(saved["after"]["nll"], abs=1e-5)  # starts where it ended
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


def test_a_folder_without_an_adapter_is_refused_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="model.adapter=.*no peft adapter there"):
        startup_check(["model=tiny", "method=none", f"model.adapter={tmp_path}", f"hydra.run.dir={tmp_path / 'r'}"])
    assert not (tmp_path / "r").exists()
