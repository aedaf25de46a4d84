"""The GPU speed levers on a CPU: each gives the plain path's loss, gradients or predictions to a stated
tolerance, the training step never waits for the device, and GPU-only levers refuse a CPU cleanly."""

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from calibration_lightning.errors import ConfigError, TrainingError
from calibration_lightning.losses.ece import ECERegularizedSFT
from calibration_lightning.losses.sft import CompletionSFT, SequenceSFT, sequence_nll
from calibration_lightning.models.loading import (
    add_lora,
    allow_tf32,
    autocast_dtype,
    load_model,
    merged_adapters,
)
from calibration_lightning.models.scoring import causal_lm_logits, padded_attention_mask
from calibration_lightning.module import CalibrationModule
from tests.conftest import config, make_datamodule, model_conf
from tests.sync_guard import HostSync, no_host_sync

ROOT = Path(__file__).resolve().parent.parent


def _module(model, head, dm, step=3, autocast=None):
    """A module as ``Trainer.fit`` holds it at ``step`` (5 steps between logging steps), without a Trainer."""
    module = CalibrationModule(model, head, dm.letter_ids, None, autocast=autocast)
    module._trainer = types.SimpleNamespace(global_step=step, current_epoch=0, log_every_n_steps=5)
    return module


def _padded_batch(dm):
    return next(b for b in dm.train_dataloader() if b["padded"])


def _rcft_head():
    head = ECERegularizedSFT(SequenceSFT())
    head.set_bin_statistics(torch.linspace(0.2, 0.9, 10), torch.full((10,), 5.0), 0, 0)
    return head


def _randomize_lora_b(model, seed=0):
    """LoRA B starts at zero, where A gets no gradient: give both a gradient to compare."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05


# -- b: no host sync inside the training step ----------------------------------------------------------
@pytest.mark.parametrize("head", [CompletionSFT, _rcft_head], ids=["cft", "rcft"])
def test_training_step_and_backward_never_read_the_device(tiny_model, tiny_datamodule, head):
    batch = _padded_batch(tiny_datamodule)
    module = _module(tiny_model, head(), tiny_datamodule)
    with no_host_sync():
        module.training_step(batch, 3).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.parameters() if p.requires_grad)


def test_sync_guard_catches_each_kind_of_host_read(tiny_model, tiny_datamodule):
    """The guard is not vacuous: the reads the step used to make all raise under it."""
    batch = _padded_batch(tiny_datamodule)
    loss = torch.tensor(1.5)
    logits, mask = torch.randn(2, 5, 7), torch.ones(2, 5)
    counted = mask[:, 1:] != 0
    for read in (
        lambda: float(loss),  # the finite check before backward
        lambda: causal_lm_logits(tiny_model, batch["input_ids"], batch["attention_mask"], padded=None),
        lambda: logits[:, :-1][counted],  # L_SFT2 by boolean indexing
        lambda: bool(loss > 0),  # a Python read of E-step state
        lambda: loss.item(),
    ):
        with no_host_sync(), pytest.raises(HostSync):
            read()


def test_logging_step_reads_the_first_non_finite_loss_with_its_step(tiny_model, tiny_datamodule):
    class NaNOnce(CompletionSFT):
        def forward(self, out, batch):
            result = super().forward(out, batch)
            result.loss = result.loss * float("nan") if module.global_step == 6 else result.loss
            return result

    module = _module(tiny_model, NaNOnce(), tiny_datamodule, step=6)
    batch = next(iter(tiny_datamodule.train_dataloader()))
    module.training_step(batch, 2)  # not a logging step: recorded on the device, nothing raised
    module._trainer.global_step = 7
    module.training_step(batch, 3)
    with pytest.raises(TrainingError, match=r"non-finite \(nan\) at step 6 \(epoch 0, batch 2\)"):
        module.on_save_checkpoint({"state_dict": {}})  # no checkpoint from poisoned adapters
    module._trainer.global_step = 10
    module.log_dict = lambda *a, **k: None
    with pytest.raises(TrainingError, match="at step 6"):
        module.training_step(batch, 6)  # the next logging step


def test_sequence_nll_equals_boolean_indexing_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 23, 97, generator=g, requires_grad=True)
    ids = torch.randint(0, 97, (4, 23), generator=g)
    mask = torch.ones(4, 23, dtype=torch.long)
    for row, pad in enumerate((0, 3, 11, 20)):
        mask[row, :pad] = 0
    counted = (mask[:, 1:] != 0) & (mask[:, :-1] != 0)
    reference = F.cross_entropy(logits[:, :-1][counted], ids[:, 1:][counted])
    (ref_grad,) = torch.autograd.grad(reference, logits)
    ours = sequence_nll(logits, ids, mask)
    (our_grad,) = torch.autograd.grad(ours, logits)
    assert abs(ours.item() - reference.item()) <= 1e-6  # summation order may move the last bit
    assert torch.equal(our_grad, ref_grad)  # the gradient, and so training, is bit-identical
    assert our_grad[0, :0].numel() == 0 and our_grad[3, :20].abs().sum() == 0  # pads get no gradient


def test_estep_state_is_on_the_host_after_a_checkpoint_load():
    head = _rcft_head()
    head.set_bin_statistics(torch.full((10,), 0.5), torch.arange(10.0), 3, 40)
    fresh = ECERegularizedSFT(SequenceSFT())
    assert not fresh.fitted
    fresh.load_state_dict(head.state_dict())
    assert fresh.fitted and fresh.last_estep == (3, 40)
    assert torch.equal(fresh.bin_count, torch.arange(10.0))


def test_unpadded_batch_without_mask_is_bit_identical_to_the_2d_mask(tiny_model):
    ids = torch.randint(5, 200, (3, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        plain = tiny_model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(12)[None].expand(3, 12))
        ours = causal_lm_logits(tiny_model, ids, mask, logits_to_keep=0, padded=False)
    assert torch.equal(ours, plain.logits)


# -- a: LoRA in bf16 (autocast, fp32 master weights) and TF32 ----------------------------------------------
def test_bf16_lora_autocast_gives_the_fp32_loss_and_gradients(tiny_source, tiny_datamodule):
    """Tolerance: bf16 keeps 8 mantissa bits, so the loss agrees to 2% and each adapter's gradient to 5%
    (relative L2 norm) on the tiny model; the adapters themselves stay float32 (the master weights)."""
    batch = _padded_batch(tiny_datamodule)
    results = {}
    for compute in ("float32", "bfloat16"):
        settings = model_conf(lora_compute=compute)
        torch.manual_seed(0)
        model = load_model(tiny_source, settings, "cpu")
        _randomize_lora_b(model)
        dtypes = set()
        lora_a = next(m for n, m in model.named_modules() if n.endswith("q_proj.lora_A.default"))
        lora_a.register_forward_hook(lambda m, i, o, seen=dtypes: seen.add(o.dtype))
        module = _module(model, _rcft_head(), tiny_datamodule, autocast=autocast_dtype(settings))
        loss = module.training_step(batch, 3)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[compute] = (loss.item(), grads, dtypes, {p.dtype for p in grads.values()})
    loss32, grads32, dtypes32, _ = results["float32"]
    loss16, grads16, dtypes16, master = results["bfloat16"]
    assert dtypes32 == {torch.float32} and dtypes16 == {torch.bfloat16} and master == {torch.float32}
    assert abs(loss16 - loss32) <= 0.02 * abs(loss32)
    for name, g in grads32.items():
        assert (grads16[name] - g).norm() <= 0.05 * g.norm() + 1e-8, name


def test_tf32_switch_and_cpu_numbers_unchanged(tiny_source, tiny_datamodule):
    before = torch.backends.cuda.matmul.fp32_precision
    try:
        allow_tf32()
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
        torch.backends.cudnn.conv.fp32_precision = "none"
    batch = _padded_batch(tiny_datamodule)
    losses = []
    for tf32 in (False, True):
        torch.manual_seed(0)
        model = load_model(tiny_source, model_conf(tf32=tf32), "cpu")
        losses.append(_module(model, CompletionSFT(), tiny_datamodule).training_step(batch, 3))
    assert torch.backends.cuda.matmul.fp32_precision == before  # only a CUDA load turns it on
    assert torch.equal(losses[0], losses[1])


# -- c: torch.compile per decoder layer ---------------------------------------------------------------------
@pytest.mark.parametrize("padded", [True, False])
def test_decoder_layer_traces_as_one_graph_without_breaks(tiny_model, padded):
    layer = next(m for m in tiny_model.modules() if type(m).__name__.endswith("DecoderLayer"))
    inner = tiny_model.base_model.model.model
    h = torch.randn(2, 7, tiny_model.config.hidden_size)
    positions = torch.arange(7)[None].expand(2, 7)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :2] = 0
    kwargs = dict(position_ids=positions, position_embeddings=inner.rotary_emb(h, positions))
    kwargs["attention_mask"] = padded_attention_mask(mask, torch.float32) if padded else None
    explained = torch._dynamo.explain(layer)(h, **kwargs)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow
# -- d: Liger kernels --------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_liger_refused_without_cuda_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="model.liger"):
        model_conf(liger=True)
    proc = subprocess.run(
        [sys.executable, "-m", "calibration_lightning", "model=tiny", "model.liger=true", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: model.liger")
    assert "CUDA" in proc.stderr and not any(tmp_path.iterdir())


# -- e: token-budget scoring batches, nf4 scoring through a dequantized merged copy --------------------------
def test_token_budget_batches_cut_by_rows_times_longest():
    from calibration_lightning.data.sampling import LengthSortedBatches

    lengths = [10, 40, 20, 20, 5, 39, 8]  # sorted: 40(1) 39(5) 20(2) 20(3) 10(0) 8(6) 5(4)
    batches = list(LengthSortedBatches(lengths, batch_size=2, tokens_per_batch=80))
    assert batches == [[1, 5], [2, 3, 0, 6], [4]]  # 80 // 40 = 2, 80 // 20 = 4, then 5 alone is left
    assert list(LengthSortedBatches(lengths, batch_size=3)) == [[1, 5, 2], [3, 0, 6], [4]]
    assert list(LengthSortedBatches([100, 90], 4, tokens_per_batch=50)) == [[0], [1]]  # never empty


def test_token_budget_scoring_gives_the_fixed_count_predictions(tiny_model, tiny_tokenizer, mmlu_splits):
    scored, counts = [], []
    for tokens in (0, 700):
        dm = make_datamodule(mmlu_splits, tiny_tokenizer, config().dataset, batch_size=4, eval_batch_size=8,
                             eval_tokens_per_batch=tokens)  # fmt: skip
        loader = dm.split_dataloader("test")
        counts.append([len(b) for b in loader.batch_sampler])
        module = CalibrationModule(tiny_model, None, dm.letter_ids, None)
        out = module.score(loader)
        order = out["index"].argsort()
        scored.append(out["letter_logits"][order])
    assert counts[0] != counts[1] and sum(counts[0]) == sum(counts[1]) == len(mmlu_splits.test)
    torch.testing.assert_close(scored[1], scored[0], rtol=0, atol=1e-5)  # padding differs, predictions not
    assert torch.equal(scored[1].argmax(-1), scored[0].argmax(-1))


def test_token_budget_batches_line_up_across_ddp_ranks(tiny_tokenizer, mmlu_splits):
    per_rank = []
    for rank in range(3):
        dm = make_datamodule(mmlu_splits, tiny_tokenizer, config().dataset, batch_size=4, eval_batch_size=8,
                             eval_tokens_per_batch=500)  # fmt: skip
        dm.trainer = types.SimpleNamespace(global_rank=rank, world_size=3)
        per_rank.append([(len(b["labels"]), b["input_ids"].numel()) for b in dm.split_dataloader("test")])
    assert len({len(batches) for batches in per_rank}) == 1  # every rank runs the same number of batches
    assert all(tokens <= 500 or rows == 1 for batches in per_rank for rows, tokens in batches)


def _nf4_tiny(source):
    """The tiny model with every linear layer but lm_head in bitsandbytes nf4 (its CPU backend), LoRA on it."""
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    for parent in list(base.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and name != "lm_head":
                q = bnb.nn.Linear4bit(
                    child.in_features, child.out_features, bias=False, compute_dtype=torch.float32, quant_type="nf4"
                )
                weight = bnb.nn.Params4bit(child.weight.data.clone(), requires_grad=False, quant_type="nf4")
                q.weight = weight._quantize("cpu")
                setattr(parent, name, q)
    base.is_loaded_in_4bit = True
    model = add_lora(base.requires_grad_(False), model_conf().lora)
    _randomize_lora_b(model)
    return model, bnb


def test_dequantized_merged_nf4_scoring_matches_unmerged(tiny_source):
    """Tolerance 1e-4 on logits: the dense copy holds exactly the weights the 4-bit kernel dequantizes, so
    only float32 summation order differs; the 4-bit layers come back untouched."""
    model, bnb = _nf4_tiny(tiny_source)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    packed = q_proj.base_layer.weight.data.clone()
    ids = torch.randint(5, 200, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with merged_adapters(model, "dequantize"):
            assert type(q_proj.base_layer) is torch.nn.Linear
            merged = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-4)
    assert (unmerged - base).abs().max() > 1e-3  # the adapters do change the scores being compared
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit) and torch.equal(q_proj.base_layer.weight.data, packed)
    assert torch.equal(after, unmerged)


def test_merge_for_eval_and_lora_compute_choices_come_from_the_schema():
    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    from calibration_lightning.schema import ModelConf

    with pytest.raises(ConfigError, match="model.merge_for_eval='dequantise': allowed: auto, dequantize, true, false"):
        model_conf(merge_for_eval="dequantise")
    assert model_conf(merge_for_eval="dequantize").merge_for_eval == "dequantize"
    node = OmegaConf.structured(ModelConf)
    node.lora_compute = "bfloat16"
    with pytest.raises(ValidationError, match="lora_compute"):
        node.lora_compute = "fp16"
