"""QLoRA (bitsandbytes nf4) on the CPU with the tiny model: the 4-bit path trains adapters only."""

import torch

from calibration_lightning.losses.sft import CompletionSFT
from calibration_lightning.models.loading import _is_quantized, load_model, merged_adapters
from calibration_lightning.module import CalibrationModule
from tests.conftest import model_conf, train_steps


def test_nf4_base_frozen_adapters_trained(tiny_source, tiny_datamodule):
    import bitsandbytes as bnb

    model = load_model(tiny_source, model_conf(quantize="nf4"), "cpu")
    assert _is_quantized(model)
    four_bit = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(four_bit) >= 14  # every attention and MLP projection of both layers
    dm = tiny_datamodule
    module = CalibrationModule(model, CompletionSFT(), dm.letter_ids, None, 10)
    batch = dm.collate([dm.encoded["train"][i] for i in range(8)])
    losses = train_steps(module, batch, 6)
    assert losses[-1] < losses[0]
    for n, m in model.named_modules():
        if n in four_bit:
            assert torch.equal(m.weight, four_bit[n]), f"4-bit weight {n} changed"
    with torch.no_grad(), merged_adapters(model, "auto"):  # auto never merges into 4-bit weights
        assert all(not getattr(m, "merged", False) for m in model.modules())
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert all("lora_" in k for k in checkpoint["state_dict"])
