"""The LightningModule on the tiny model: letter softmax, loss heads, a CFT step."""

import torch

from calibration_lightning.calibration.confidence import letter_probabilities
from calibration_lightning.losses.sft import CompletionSFT, SequenceSFT
from calibration_lightning.module import CalibrationModule
from tests.conftest import optim, train_steps


def _module(model, dm, head=None):
    return CalibrationModule(model, head, dm.letter_ids, optim(lr=1e-2, warmup_ratio=0.0), 10)


def _batch(dm, split="test", n=6):
    return dm.collate([dm.encoded[split][i] for i in range(n)])


def test_letter_softmax_equals_plain_unpadded_forward(tiny_model, tiny_datamodule):
    dm = tiny_datamodule
    module = _module(tiny_model, dm).eval()
    batch = _batch(dm)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain left padding"
    with torch.no_grad():
        probs = module(batch).letter_probs
        for row in range(len(batch["labels"])):
            ids = torch.tensor([dm.encoded["test"][row].input_ids])
            logits = tiny_model(input_ids=ids).logits[0, -1]  # full logits, no padding, default positions
            plain = torch.softmax(logits[dm.letter_ids].float(), dim=-1)
            assert torch.allclose(probs[row], plain, atol=1e-5)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(probs)))
    assert torch.equal(probs, letter_probabilities(module(batch).letter_logits))


def test_sequence_sft_equals_hf_causal_lm_loss(tiny_model, tiny_datamodule):
    dm = tiny_datamodule
    module = _module(tiny_model, dm).eval()
    batch = _batch(dm, n=1)
    with torch.no_grad():
        ours = SequenceSFT()(module(batch, full_sequence=True), batch).loss
        ids = torch.cat([batch["input_ids"], batch["answer_token"][:, None]], dim=1)
        reference = tiny_model(input_ids=ids, labels=ids).loss
        assert torch.allclose(ours, reference, atol=1e-5)
        # the answer position of the full-sequence pass is the same as the prompt-only pass
        padded = _batch(dm)
        full = module(padded, full_sequence=True).letter_logits
        short = module(padded).letter_logits
        assert torch.allclose(full, short, atol=1e-4)


def test_completion_sft_equals_full_logit_cross_entropy(tiny_model, tiny_datamodule):
    dm = tiny_datamodule
    module = _module(tiny_model, dm).eval()
    batch = _batch(dm, split="train", n=4)
    with torch.no_grad():
        ours = CompletionSFT()(module(batch), batch).loss
        losses = []
        for row in range(4):
            ids = torch.tensor([dm.encoded["train"][row].input_ids + [int(batch["answer_token"][row])]])
            labels = torch.full_like(ids, -100)
            labels[0, -1] = ids[0, -1]  # completion only: the answer letter
            losses.append(tiny_model(input_ids=ids, labels=labels).loss)
        assert torch.allclose(ours, torch.stack(losses).mean(), atol=1e-5)


def test_cft_step_lowers_loss_moves_adapters_only(tiny_model, tiny_datamodule):
    dm = tiny_datamodule
    module = _module(tiny_model, dm, CompletionSFT())
    batch = _batch(dm, split="train", n=8)
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    losses = train_steps(module, batch, 8)
    assert losses[-1] < losses[0] - 0.1
    for n, p in module.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen weight {n} changed"
    changed = [n for n, p in module.named_parameters() if n in adapters and not torch.equal(p, adapters[n])]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)


def test_checkpoint_holds_adapters_and_head_state_only(tiny_model, tiny_datamodule):
    from calibration_lightning.losses.ece import ECERegularizedSFT

    module = _module(tiny_model, tiny_datamodule, ECERegularizedSFT(SequenceSFT()))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    keys = set(checkpoint["state_dict"])
    assert keys and all("lora_" in k or k.startswith("loss_head.") for k in keys)
    assert {"loss_head.bin_accuracy", "loss_head.bin_count"} <= keys


def test_speed_levers_are_numerically_equivalent(tiny_model, tiny_datamodule):
    """Base-path scoring before training, merged adapters after, and gradient checkpointing change nothing."""
    from calibration_lightning.models.loading import base_model_scoring, enable_gradient_checkpointing, merged_adapters

    dm = tiny_datamodule
    module = _module(tiny_model, dm, CompletionSFT()).eval()
    batch = _batch(dm)
    with torch.no_grad():
        with_zero_b = module(batch).letter_logits
        with base_model_scoring(tiny_model):
            base = module(batch).letter_logits
        assert torch.equal(with_zero_b, base)
        for n, p in tiny_model.named_parameters():  # as after training: non-zero adapters
            if "lora_B" in n:
                p.normal_(0, 0.05)
        unmerged = module(batch).letter_logits
        with merged_adapters(tiny_model, "auto"):
            merged = module(batch).letter_logits
        assert torch.allclose(unmerged, merged, atol=1e-4) and not torch.allclose(unmerged, base, atol=1e-3)
        # unmerged again afterwards (W + BA - BA restores W up to float rounding)
        assert torch.allclose(module(batch).letter_logits, unmerged, atol=1e-6)

    module.train()
    train = _batch(dm, split="train", n=4)

    def loss_and_grads():
        module.zero_grad()
        loss = module.loss_head(module(train), train).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}

    plain_loss, plain_grads = loss_and_grads()
    enable_gradient_checkpointing(tiny_model)
    ckpt_loss, ckpt_grads = loss_and_grads()
    assert torch.allclose(plain_loss, ckpt_loss, atol=1e-6)
    for n in plain_grads:
        assert torch.allclose(plain_grads[n], ckpt_grads[n], atol=1e-6), n
