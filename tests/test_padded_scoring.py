"""Scoring left-padded batches (finite gradients, logits equal to unpadded ones), the converted bundled model's
config, and the E-step and evaluation under DDP and FSDP (on a GPU)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from calibration_lightning.losses.sft import SequenceSFT
from calibration_lightning.models.scoring import causal_lm_logits, padded_attention_mask
from calibration_lightning.models.sources import _drop_gguf_quantization_config, bundled_smollm2


def nan_prone_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Attention as CUDA kernels compute it for a fully masked row: softmax over nothing is NaN."""
    if enable_gqa:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
    scores = query @ key.transpose(-2, -1) * (scale or 1 / math.sqrt(query.shape[-1]))
    t, s = scores.shape[-2:]
    allowed = torch.ones(t, s, dtype=torch.bool).tril() if is_causal else torch.ones(t, s, dtype=torch.bool)
    if attn_mask is not None:
        allowed = allowed & (
            attn_mask if attn_mask.dtype == torch.bool else attn_mask > torch.finfo(attn_mask.dtype).min / 2
        )
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ value


def test_padded_rows_give_finite_gradients_with_nan_prone_attention(tiny_model, monkeypatch):
    monkeypatch.setattr(F, "scaled_dot_product_attention", nan_prone_sdpa)
    ids = torch.randint(5, 200, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :9] = 0
    tiny_model.train()
    logits = causal_lm_logits(tiny_model, ids, mask, logits_to_keep=0)
    assert torch.isfinite(logits).all()
    loss = F.cross_entropy(logits[:, -1].float(), ids[:, 0])
    loss.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.requires_grad]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # The same attention with the plain 2-D mask: pad rows become NaN and spread.
    plain = tiny_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
    assert torch.isnan(plain[0, :4]).all() and torch.isfinite(plain[1]).all()


def test_padded_mask_keeps_real_rows_and_unmasks_only_pad_diagonals():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    m = padded_attention_mask(mask, torch.float32) == 0  # True where attention is allowed
    expected_row0 = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(m[0, 0], expected_row0)
    assert torch.equal(m[1, 0], torch.ones(4, 4, dtype=torch.bool).tril())


def test_padded_logits_equal_unpadded_forward(tiny_model):
    tiny_model.eval()
    ids = torch.randint(5, 200, (1, 9))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    with torch.no_grad():
        ours = causal_lm_logits(tiny_model, padded, mask, logits_to_keep=0)[:, 5:]
        plain = tiny_model(input_ids=ids).logits
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)


def test_sequence_sft_on_padded_batch_equals_unpadded_per_row_loss(tiny_model):
    """L_SFT2 of a left-padded batch = mean over real tokens of each row's own unpadded causal-LM loss."""
    from calibration_lightning.module import CalibrationModule

    module = CalibrationModule(tiny_model, SequenceSFT(), [10, 11, 12, 13], None).eval()
    rows = [torch.randint(20, 200, (n,)) for n in (7, 11, 4)]
    answers = torch.tensor([10, 12, 13])
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(r)), torch.ones(len(r))]).long() for r in rows])
    batch = {"input_ids": ids, "attention_mask": mask, "answer_token": answers, "n_choices": torch.full((3,), 4),
             "labels": torch.tensor([0, 2, 3])}  # fmt: skip
    with torch.no_grad():
        ours = module.loss_head(module(batch, True), batch).loss
        total, count = 0.0, 0
        for r, a in zip(rows, answers):
            seq = torch.cat([r, a[None]])[None]
            logits = tiny_model(input_ids=seq).logits[0, :-1]
            total += F.cross_entropy(logits.float(), seq[0, 1:], reduction="sum").item()
            count += seq.shape[1] - 1
    assert abs(ours.item() - total / count) < 1e-5


def test_gguf_quantization_config_is_dropped_from_a_converted_folder(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "quantization_config": {"quant_method": "gguf", "gguf_file": "x.gguf"}})
    )
    _drop_gguf_quantization_config(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == {"model_type": "llama"}
    bnb = {"model_type": "llama", "quantization_config": {"quant_method": "bitsandbytes"}}
    (tmp_path / "config.json").write_text(json.dumps(bnb))
    _drop_gguf_quantization_config(tmp_path)  # a folder quantized on purpose keeps its setting
    assert json.loads((tmp_path / "config.json").read_text()) == bnb


@pytest.mark.slow
def test_converted_smollm2_config_has_no_gguf_quantization():
    from pathlib import Path

    config = json.loads((Path(bundled_smollm2()) / "config.json").read_text())
    assert "quantization_config" not in config


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@GPU
def test_rcft_trains_under_ddp_on_a_gpu(make_cfg, tmp_path):
    """The E-step's all-reduce runs through NCCL, which takes only tensors on the module's device."""
    from calibration_lightning.recipe import run
    from tests.conftest import TINY_SPLIT

    result = run(
        make_cfg("model=tiny", "method=rcft", "method.epochs=1", "trainer=ddp", "trainer.devices=1", *TINY_SPLIT)
    )
    assert result["training"]["epochs_run"] == 1 and result["after"] != result["before"]


@GPU
def test_fsdp_run_trains_its_adapters_on_a_gpu(make_cfg, tmp_path):
    """Evaluation before fit runs with autograd under FSDP, so the adapters still train afterwards."""
    from safetensors.torch import load_file

    from calibration_lightning.recipe import run
    from tests.conftest import TINY_SPLIT

    cfg = make_cfg("model=tiny", "method.epochs=1", "method.select=null", "trainer=fsdp", "trainer.devices=1",
                   "model.quantize=none", *TINY_SPLIT)  # fmt: skip
    run(cfg)
    adapter = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.items())  # B starts at 0
