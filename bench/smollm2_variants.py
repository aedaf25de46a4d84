"""Models to check the defaults off the bench they were developed on: SmolLM2-135M-Instruct changed so that its
calibration is unlike the bundled model's, saved as a Hugging Face folder for ``model=hf``.

    python bench/smollm2_variants.py flat OUT_DIR [--scale 0.4]
        every logit multiplied by ``scale`` (the final RMSNorm's weight scaled): a softer, base-model-like
        model; near chance on MMLU and moderately overconfident rather than collapsed onto one letter.

Then: python -m calibration_lightning model=hf model.loader.name_or_path=OUT_DIR [method=...]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from calibration_lightning.models.sources import bundled_smollm2


def flat(model, scale: float) -> None:
    """Logits times ``scale``: the final norm's weight scaled (the output embedding is tied to the input)."""
    with torch.no_grad():
        model.model.norm.weight.mul_(scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["flat"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", type=float, default=0.4)
    args = parser.parse_args()
    source = bundled_smollm2()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    flat(model, args.scale)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"wrote {args.out}: model=hf model.loader.name_or_path={args.out}")


if __name__ == "__main__":
    main()
