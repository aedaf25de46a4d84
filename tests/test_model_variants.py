"""bench/smollm2_variants.py: the models the defaults are checked on beside the bundled one."""

import importlib.util

import torch

from calibration_lightning.models.tiny import build_tiny_model, build_tiny_tokenizer
from tests.helpers import ROOT


def _variants():
    spec = importlib.util.spec_from_file_location("smollm2_variants", ROOT / "bench" / "smollm2_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flat_multiplies_every_logit_by_the_scale():
    model = build_tiny_model(build_tiny_tokenizer()).eval()
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        _variants().flat(model, 0.3)
        after = model(input_ids=ids).logits
    assert torch.allclose(after, 0.3 * before, atol=1e-5)
    probs = torch.softmax(after, -1).amax(-1)
    assert bool((probs < torch.softmax(before, -1).amax(-1)).all())  # softer: every top probability falls
