"""GPU benchmark: our training step (CFT, RCFT) and scoring on a Llama-3.1-8B-shaped model, vs the plain stack.

One device call (a few minutes on an H100/H200), random weights (speed does not depend on their values):

    cp ../shared/bench/plain_peft_anchor.py bench/.anchor/    # git-ignored; carry it to the device
    python bench/gpu_bench.py --anchor bench/.anchor/plain_peft_anchor.py --out $OUT

    python bench/gpu_bench.py --shape tiny --batch 2 --seq 32 --eval-batch 4   # checks the script on a CPU

Cases, each for bf16 LoRA and nf4 QLoRA, LoRA r=128 alpha=64 on all linear layers, batch 8 x 256 tokens:
  cft / rcft    our CalibrationModule.training_step + AdamW step (what Trainer.fit runs per step), with
                gradient checkpointing off (fast mode) and on (memory-saving mode)
  score         our scoring of 32 x 256 prompts: trained adapters merged (bf16) or unmerged (nf4), and the
                base path used before training (adapters disabled)
The anchor (the plain transformers + peft script) runs in the same call, so every figure is also a ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calibration_lightning.losses.ece import ECERegularizedSFT  # noqa: E402
from calibration_lightning.losses.sft import CompletionSFT, SequenceSFT  # noqa: E402
from calibration_lightning.models.loading import (  # noqa: E402
    add_lora,
    base_model_scoring,
    enable_gradient_checkpointing,
    merged_adapters,
)
from calibration_lightning.module import CalibrationModule  # noqa: E402
from calibration_lightning.schema import LoraConf  # noqa: E402


def model_config(shape: str):
    from transformers import LlamaConfig

    if shape == "llama31_8b":
        return LlamaConfig(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=8192,
            rope_theta=500000.0,
            tie_word_embeddings=False,
        )
    return LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )


def quantize_nf4_(model, compute_dtype):
    """Replace every Linear but lm_head by a bitsandbytes nf4 Linear4bit (double quantization)."""
    import bitsandbytes as bnb

    device = next(model.parameters()).device
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and name != "lm_head":
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=compute_dtype,
                    quant_type="nf4",
                    device="meta",
                )
                q.weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True
                )
                setattr(parent, name, q.to(device))
    model.is_loaded_in_4bit = True
    return model


def build(cfg, quant: str, device, dtype, checkpointing: bool):
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    model.requires_grad_(False)
    model.config.use_cache = False
    if quant == "nf4":
        quantize_nf4_(model, dtype)
    model = add_lora(model, LoraConf(r=128, alpha=64, dropout=0.0, target_modules="all-linear"))
    if checkpointing:
        enable_gradient_checkpointing(model)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup, iters) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def batch_of(cfg, n, seq, device, letters):
    g = torch.Generator().manual_seed(n)
    labels = torch.randint(0, 4, (n,), generator=g)
    return {
        "input_ids": torch.randint(0, cfg.vocab_size, (n, seq), generator=g).to(device),
        "attention_mask": torch.ones(n, seq, dtype=torch.long, device=device),
        "labels": labels.to(device),
        "answer_token": letters[labels].to(device),
        "n_choices": torch.full((n,), 4, device=device),
        "index": torch.arange(n, device=device),
        "keep": torch.ones(n, dtype=torch.bool, device=device),
    }


def time_training(model, head, letters, train, args, device) -> dict:
    """Median tokens/s (and peak memory) of what Trainer.fit runs per step: training_step, backward, AdamW."""
    module = CalibrationModule(model, head.to(device), letters.tolist(), None, 10).to(device)
    module.train()
    module.log = module.log_dict = lambda *a, **k: None  # no Trainer attached; Lightning's logging is not timed
    # A step between logging steps, as most of Trainer.fit's steps are (no host read of the loss).
    module._trainer = types.SimpleNamespace(global_step=1, current_epoch=0, log_every_n_steps=50)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)

    def step():
        module.training_step(train, 0).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        s = timed(step, device, args.warmup, args.iters)
    except torch.cuda.OutOfMemoryError as e:
        return {"error": repr(e)[:200]}
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"tokens_per_s": round(args.batch * args.seq / s, 1), "peak_GiB": None if peak is None else round(peak, 2)}


def time_scoring(model, letters, score, context, args, device) -> dict:
    module = CalibrationModule(model, None, letters.tolist(), None, 10).to(device).eval()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with context, torch.inference_mode():
        s = timed(lambda: module._score_batch(score), device, args.warmup, args.iters)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {
        "tokens_per_s": round(args.eval_batch * args.seq / s, 1),
        "peak_GiB": None if peak is None else round(peak, 2),
    }


def run_ours(args, device, dtype) -> list[dict]:
    cfg = model_config(args.shape)
    letters = torch.tensor([32, 33, 34, 35])
    train = batch_of(cfg, args.batch, args.seq, device, letters)
    score = batch_of(cfg, args.eval_batch, args.seq, device, letters)
    rows = []
    for quant in args.quants.split(","):
        t0 = time.perf_counter()
        model = build(cfg, quant, device, dtype, checkpointing=False)
        sync(device)
        print({"quant": quant, "build_s": round(time.perf_counter() - t0, 1)}, flush=True)
        for checkpointing in (False, True):
            if checkpointing:  # the same model: building an 8B nf4 model twice costs more than the timings
                enable_gradient_checkpointing(model)
            for loss_name in ("cft", "rcft"):
                head = CompletionSFT() if loss_name == "cft" else ECERegularizedSFT(SequenceSFT(), lam=1.0)
                if loss_name == "rcft":
                    head.set_bin_statistics(torch.linspace(0.2, 0.9, 10), torch.full((10,), 50.0), 0, 0)
                result = time_training(model, head, letters, train, args, device)
                rows.append({"quant": quant, "case": f"train_{loss_name}", "checkpointing": checkpointing, **result})
                print(rows[-1], flush=True)
            if not checkpointing:
                for label, context in (
                    ("score_trained", merged_adapters(model, "auto")),
                    ("score_base_path", base_model_scoring(model)),
                ):
                    rows.append(
                        {"quant": quant, "case": label, **time_scoring(model, letters, score, context, args, device)}
                    )
                    print(rows[-1], flush=True)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# The plain-stack case each of our rows is compared with: CFT with train B (the same loss from the last
# position), RCFT with train C (full-sequence SFT), scoring with eval E2. With checkpointing the anchor ran
# the paper's setting, cases A and C only, so CFT is compared with train A there.
PLAIN_CASE = {"train_cft": ("train_B", "train_A"), "train_rcft": ("train_C", "train_C"),
              "score_trained": ("eval_E2", None), "score_base_path": ("eval_E2", None)}  # fmt: skip


def plain_reference(anchor: list[dict], row: dict) -> dict | None:
    """The anchor row run with the same quantization and the same checkpointing setting as ``row``."""
    ckpt = bool(row.get("checkpointing"))
    case = PLAIN_CASE[row["case"]][ckpt]
    for r in anchor:
        if "tokens_per_s" in r and r["quant"] == row["quant"] and r["case"].startswith(case + "_"):
            if r["anchor_gc"] == ("1" if ckpt else "0"):
                return r
    return None


def run_anchor(args) -> list[dict]:
    """The plain stack, same shape and batch, in this process's machine: best settings and the paper's."""
    rows = []
    common = [
        "--shape",
        args.shape,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--eval-batch",
        str(args.eval_batch),
        "--quants",
        args.quants,
        "--iters",
        str(args.iters),
    ]
    # Fast settings for every case; the paper's (checkpointing, dropout 0.05) for the training memory figures.
    for flags in (["--gc", "0", "--dropout", "0"], ["--gc", "1", "--dropout", "0.05", "--cases", "A,C"]):
        out = subprocess.run([sys.executable, args.anchor, *common, *flags], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if line.startswith("{'quant'"):
                row = eval(line, {"__builtins__": {}})  # the anchor prints Python dict literals
                row["anchor_gc"] = flags[1]
                rows.append(row)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama31_8b", choices=["llama31_8b", "tiny"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--quants", default="bf16,nf4")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--anchor", default=None, help="path to plain_peft_anchor.py (run in the same call)")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(
        {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__},
        flush=True,
    )
    ours = run_ours(args, device, dtype)
    anchor = run_anchor(args) if args.anchor else []
    print("\nquant case            ckpt   tok/s     peak GiB  vs plain (same checkpointing)  plain peak GiB")
    for r in ours:
        if "error" in r:
            print(f"{r['quant']:5} {r['case']:16} {str(r.get('checkpointing', '')):6} ERROR {r['error'][:60]}")
            continue
        ref = plain_reference(anchor, r)
        ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x vs {ref['case'][:7]}" if ref else "-"
        print(
            f"{r['quant']:5} {r['case']:16} {str(r.get('checkpointing', '')):6} {r['tokens_per_s']:9.0f} "
            f"{r.get('peak_GiB') or '-':>9}  {ratio:30} {ref.get('peak_GiB', '-') if ref else '-'}"
        )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_bench.json").write_text(json.dumps({"ours": ours, "anchor": anchor}, indent=1))


if __name__ == "__main__":
    main()
