"""Merged against unmerged adapter scoring of one trained run: the largest letter-probability difference.

    python bench/merge_probe.py RUN_DIR [--out probe.json]

Rebuilds the run's data and model from RUN_DIR/config.yaml, loads RUN_DIR/adapter, and scores the test
split twice: with the LoRA adapters folded into the base weights (what runs do after training when
``model.merge_for_eval`` resolves to true) and unfolded. Also compares the merged scores with the run's
own ``predictions_after.jsonl``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def probe(run_dir: Path) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from calibration_lightning.calibration.confidence import letter_probabilities
    from calibration_lightning.data.datamodule import MultipleChoiceDataModule
    from calibration_lightning.data.records import LETTERS
    from calibration_lightning.models.loading import load_model, load_tokenizer, merged_adapters
    from calibration_lightning.module import CalibrationModule
    from calibration_lightning.schema import build, load
    from calibration_lightning.startup import load_data

    cfg = load(run_dir / "config.yaml")
    splits, eval_sets = load_data(cfg)
    source = build(cfg.model.loader, "model.loader")
    settings = dataclasses.replace(cfg.model, compile=False, gradient_checkpointing=False)
    tokenizer = load_tokenizer(source, settings)
    dm = MultipleChoiceDataModule(splits, tokenizer, cfg.dataset, cfg.seed, eval_sets)
    dm.setup()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(source, settings, device)
    loaded = set_peft_model_state_dict(model, load_file(str(run_dir / "adapter" / "adapter_model.safetensors")))
    if loaded.unexpected_keys:
        raise RuntimeError(f"adapter keys not in the model: {loaded.unexpected_keys[:5]}")
    module = CalibrationModule(model, None, dm.letter_ids, None, cfg.n_bins).to(device)
    loader = dm.split_dataloader("test")

    def probabilities(scored):
        return letter_probabilities(scored["letter_logits"], scored["n_choices"])

    unmerged = probabilities(module.score(loader))
    with merged_adapters(model, True):
        scored = module.score(loader)
    merged = probabilities(scored)
    rows = [json.loads(line) for line in (run_dir / "predictions_after.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in rows}
    records = dm.records["test"]
    from_file = torch.zeros_like(merged)
    for n, i in enumerate(scored["index"].tolist()):
        for j, p in by_id[records[i].id]["probabilities"].items():
            from_file[n, LETTERS.index(j)] = p
    return {
        "run": str(run_dir),
        "dtype": str(next(p for p in model.parameters() if p.is_floating_point()).dtype),
        "questions": len(merged),
        "max_abs_diff_merged_vs_unmerged": float((merged - unmerged).abs().max()),
        "mean_abs_diff_merged_vs_unmerged": float((merged - unmerged).abs().mean()),
        "argmax_agreement": float((merged.argmax(-1) == unmerged.argmax(-1)).float().mean()),
        "max_abs_diff_merged_vs_run_file": float((merged - from_file).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = probe(args.run_dir)
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
