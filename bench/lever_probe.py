"""Every speed lever of the GPU issue, on and off, in alternating rounds within one run (a few minutes on an H200).

    python bench/lever_probe.py --out $OUT                     # GPU: Llama-3.1-8B shape, LoRA r=128, 8 x 256
    python bench/lever_probe.py --cpu-dry-run --out DIR        # tiny shape on a CPU in seconds (the tests run it)

Training variants share one model per quantization (bf16, nf4) and one fixed batch; AdamW runs with lr=0,
so the weights never move and every variant's loss is comparable with ``ours``:
  plain        the plain transformers + peft step on the same model (the anchor's case B: last-position
               logits, cross-entropy): like-for-like, the 4-bit layers wrapped exactly as ours
  ours         CalibrationModule.training_step (CFT) + backward + AdamW, as Trainer.fit runs it
  ours_sync    ours with the host reads the step used to make (finite check every step, padding read
               from the device): lever b measured as what it saves
  bf16_lora    model.lora_compute=bfloat16: autocast, peft's float32 input casting off (lever a)
  tf32         model.tf32=true: the float32 LoRA matmuls on TF32 tensor cores (lever a)
  compile      model.compile=true: torch.compile per decoder layer (lever c; compile time reported apart)
  liger        model.liger=true, on the last quantization only (it patches the model and transformers' RoPE
               in place, so it is timed after the others, against ``ours`` rounds just before it) (lever d)
Rounds rotate the order of the variants; each variant gets ``--rounds`` x ``--steps`` timed steps (20 by
default) after one warm-up step per round. On CUDA one ``ours`` step runs under
``torch.cuda.set_sync_debug_mode("warn")`` and the syncs it reports are counted (target: 0).

Scoring variants (lever e) on 256 prompts of 64-256 tokens: fixed 32-prompt batches against a token budget
of 32 x 256; for nf4 also the adapters unmerged against the dequantized merged copy.

Writes OUT/lever_probe.json (every figure, the card, the versions) and prints a table last.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_bench import batch_of, build, model_config, sync  # noqa: E402

from calibration_lightning.data.sampling import LengthSortedBatches  # noqa: E402
from calibration_lightning.losses.sft import CompletionSFT  # noqa: E402
from calibration_lightning.models.loading import (  # noqa: E402
    allow_tf32,
    apply_liger,
    merged_adapters,
    set_lora_input_casting,
)
from calibration_lightning.module import CalibrationModule  # noqa: E402

LETTERS = torch.tensor([32, 33, 34, 35])


class Variant:
    """A named way to run the training step: ``enter`` and ``leave`` switch the lever on and off."""

    def __init__(self, name, step, enter=None, leave=None):
        self.name, self.step, self.enter, self.leave = name, step, enter or (lambda: None), leave or (lambda: None)
        self.times: list[float] = []
        self.losses: list[float] = []


def off_logging_step():
    """What a module under ``Trainer.fit`` sees between logging steps (no Trainer is built here)."""
    return types.SimpleNamespace(global_step=1, current_epoch=0, log_every_n_steps=50)


def _decoder_layers(model):
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def training_variants(model, batch, device, dry: bool, levers: set[str]) -> tuple[list[Variant], dict]:
    """The variants for one model; ``extra`` collects compile time and what was skipped."""
    extra: dict = {"skipped": {}}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    plain_batch = {k: v for k, v in batch.items() if k != "padded"}

    def run(module, b):
        def step():
            loss = module.training_step(b, 1)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        return step

    def module_for(**kwargs):
        m = CalibrationModule(model, CompletionSFT(), LETTERS.tolist(), None, 10, **kwargs).to(device)
        m.log = m.log_dict = lambda *a, **k: None
        m._trainer = off_logging_step()
        return m.train()

    def plain_step():
        out = model(input_ids=batch["input_ids"], logits_to_keep=1, use_cache=False)
        loss = F.cross_entropy(out.logits[:, -1].float(), batch["answer_token"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    ours = module_for()
    variants = [Variant("plain", plain_step), Variant("ours", run(ours, batch))]
    if "sync" in levers:
        variants.append(Variant("ours_sync", run(module_for(check_finite_every_step=True), plain_batch)))
    if "bf16_lora" in levers:
        variants.append(
            Variant(
                "bf16_lora",
                run(module_for(autocast=torch.bfloat16), batch),
                lambda: set_lora_input_casting(model, False),
                lambda: set_lora_input_casting(model, True),
            )
        )
    if "tf32" in levers:
        if device.type == "cuda":
            before = torch.backends.cuda.matmul.fp32_precision

            def tf32_off():
                torch.backends.cuda.matmul.fp32_precision = before

            variants.append(Variant("tf32", run(ours, batch), allow_tf32, tf32_off))
        else:
            extra["skipped"]["tf32"] = "CUDA only"
    if "compile" in levers:
        layers = _decoder_layers(model)
        t0 = time.perf_counter()
        for layer in layers:  # inductor on 2 CPU cores takes minutes: the dry run checks dynamo's tracing
            layer.compile(backend="eager" if dry else "inductor")
        compiled = [layer._compiled_call_impl for layer in layers]
        run(ours, batch)()
        sync(device)
        extra["compile_s"] = round(time.perf_counter() - t0, 1)

        def compile_on():
            for layer, impl in zip(layers, compiled):
                layer._compiled_call_impl = impl

        def compile_off():
            for layer in layers:
                layer._compiled_call_impl = None

        compile_off()
        variants.append(Variant("compile", run(ours, batch), compile_on, compile_off))
    return variants, extra


def time_rounds(variants: list[Variant], rounds: int, steps: int, device) -> None:
    """Each round runs every variant (warm-up step, then ``steps`` timed), the order rotated per round."""
    for r in range(rounds):
        for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
            v.enter()
            try:
                v.losses.append(float(v.step()))
                sync(device)
                for _ in range(steps):
                    t = time.perf_counter()
                    v.step()
                    sync(device)
                    v.times.append(time.perf_counter() - t)
            finally:
                v.leave()


def count_syncs(step, device) -> int | None:
    """Synchronizing CUDA calls in one step, as ``torch.cuda.set_sync_debug_mode("warn")`` reports them."""
    if device.type != "cuda":
        return None
    step()
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def summarize(variants: list[Variant], tokens: int) -> list[dict]:
    base = next(v for v in variants if v.name == "ours")
    plain = next((v for v in variants if v.name == "plain"), None)
    rows = []
    for v in variants:
        ms = statistics.median(v.times) * 1000
        row = {"variant": v.name, "ms_per_step": round(ms, 2), "tokens_per_s": round(tokens / ms * 1000, 1),
               "timed_steps": len(v.times), "loss": round(statistics.mean(v.losses), 6),
               "loss_rel_diff_vs_ours": abs(statistics.mean(v.losses) - statistics.mean(base.losses))
               / max(abs(statistics.mean(base.losses)), 1e-12),
               "speedup_vs_ours": round(statistics.median(base.times) * 1000 / ms, 3)}  # fmt: skip
        if plain is not None:
            row["speedup_vs_plain"] = round(statistics.median(plain.times) * 1000 / ms, 3)
        rows.append(row)
    return rows


def liger_rows(model, batch, device, args) -> dict:
    """Liger patches the model in place: ``ours`` rounds first, then the same rounds with Liger on."""
    import importlib.util

    if device.type != "cuda" or importlib.util.find_spec("liger_kernel") is None:
        return {"skipped": "needs CUDA and the liger-kernel package"}
    variants, _ = training_variants(model, batch, device, False, set())
    ours = next(v for v in variants if v.name == "ours")
    time_rounds([ours], args.rounds, args.steps, device)
    before = statistics.median(ours.times)
    apply_liger(model.get_base_model())
    liger = Variant("liger", ours.step)
    time_rounds([liger], args.rounds, args.steps, device)
    after = statistics.median(liger.times)
    return {"ours_ms": round(before * 1000, 2), "liger_ms": round(after * 1000, 2),
            "speedup": round(before / after, 3), "loss_rel_diff": abs(liger.losses[0] - ours.losses[0])
            / max(abs(ours.losses[0]), 1e-12)}  # fmt: skip


def scoring_rows(model, quant, cfg, device, args) -> list[dict]:
    """Scoring throughput: fixed-count batches against a token budget; nf4 unmerged against dequantized-merged."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.seq // 4, args.seq + 1, (args.score_prompts,), generator=g).tolist()
    prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in lengths]
    module = CalibrationModule(model, None, LETTERS.tolist(), None, 10).to(device).eval()

    def batches(tokens_per_batch):
        out = []
        for idx in LengthSortedBatches(lengths, args.eval_batch, tokens_per_batch):
            width = max(lengths[i] for i in idx)
            ids = torch.zeros(len(idx), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(idx):
                ids[row, width - lengths[i] :] = prompts[i]
                mask[row, width - lengths[i] :] = 1
            b = batch_of(cfg, len(idx), width, device, LETTERS)
            b.update(input_ids=ids.to(device), attention_mask=mask.to(device), padded=bool((mask == 0).any()))
            out.append(b)
        return out

    fixed, budget = batches(0), batches(args.eval_batch * args.seq)
    contexts = {"bf16": [("merged", "auto")], "nf4": [("unmerged", "auto"), ("dequantized_merged", "dequantize")]}
    rows = []
    for label, setting in contexts[quant]:
        for name, bs in (("fixed_count", fixed), ("token_budget", budget)):
            with merged_adapters(model, setting), torch.inference_mode():
                for b in bs[:2]:
                    module._score_batch(b)
                sync(device)
                times = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    for b in bs:
                        module._score_batch(b)
                    sync(device)
                    times.append(time.perf_counter() - t)
            rows.append({"quant": quant, "adapters": label, "batches": name, "n_batches": len(bs),
                         "tokens_per_s": round(sum(lengths) / statistics.median(times), 1)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "outputs/lever_probe"))
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny shapes on the CPU, seconds")
    parser.add_argument("--quants", default=None, help="bf16,nf4 (GPU default); the dry run uses bf16 only")
    parser.add_argument("--levers", default="sync,bf16_lora,tf32,compile,liger,scoring")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (GPU 4, dry run 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (GPU 5, dry run 1)")
    args = parser.parse_args(argv)
    dry = args.cpu_dry_run
    device = torch.device("cuda" if torch.cuda.is_available() and not dry else "cpu")
    if device.type != "cuda" and not dry:
        print("error: no CUDA device; run with --cpu-dry-run to check the script on a CPU", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.shape = "tiny" if dry else "llama31_8b"
    args.batch, args.seq = (2, 32) if dry else (8, 256)
    args.eval_batch, args.score_prompts = (4, 32) if dry else (32, 256)
    args.rounds = args.rounds or (2 if dry else 4)
    args.steps = args.steps or (1 if dry else 5)
    quants = (args.quants or ("bf16" if dry else "bf16,nf4")).split(",")
    levers = set(args.levers.split(","))
    import peft
    import transformers

    report = {"dry_run": dry, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "peft": peft.__version__},
              "shape": args.shape, "batch": args.batch, "seq": args.seq, "rounds": args.rounds,
              "steps_per_round": args.steps, "training": {}, "scoring": [], "liger": {}}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)

    def save():
        tmp = args.out / "lever_probe.json.tmp"
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, args.out / "lever_probe.json")

    cfg = model_config(args.shape)
    for quant in quants:
        t0 = time.perf_counter()
        model = build(cfg, quant, device, dtype, checkpointing=False)
        batch = batch_of(cfg, args.batch, args.seq, device, LETTERS)
        batch["padded"] = False
        variants, extra = training_variants(model, batch, device, dry, levers)
        ours = next(v for v in variants if v.name == "ours")
        syncs = count_syncs(ours.step, device)
        time_rounds(variants, args.rounds, args.steps, device)
        report["training"][quant] = {"build_s": round(time.perf_counter() - t0, 1), "syncs_in_step": syncs,
                                     "rows": summarize(variants, args.batch * args.seq), **extra}  # fmt: skip
        save()
        if "scoring" in levers:
            for layer in _decoder_layers(model):
                layer._compiled_call_impl = None
            report["scoring"] += scoring_rows(model, quant, cfg, device, args)
            save()
        if "liger" in levers and quant == quants[-1]:  # its RoPE patch is global: last, once
            report["liger"][quant] = liger_rows(model, batch, device, args)
            save()
        del model, variants
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\n{report['device']}, {args.shape}, batch {args.batch} x {args.seq}, {args.rounds} x {args.steps} steps")
    print("quant variant      ms/step   tok/s     vs ours  vs plain  loss rel diff")
    for quant, result in report["training"].items():
        for r in result["rows"]:
            speed = f"{r['speedup_vs_ours']:7.2f}x {r.get('speedup_vs_plain', 0):7.2f}x"
            print(f"{quant:5} {r['variant']:11} {r['ms_per_step']:9.1f} {r['tokens_per_s']:9.0f} {speed}  "
                  f"{r['loss_rel_diff_vs_ours']:.1e}")  # fmt: skip
        print(f"{quant:5} syncs in one step: {result['syncs_in_step']}; compile {result.get('compile_s')} s; "
              f"skipped {result['skipped']}; liger {report['liger'].get(quant)}")  # fmt: skip
    for r in report["scoring"]:
        print(f"{r['quant']:5} scoring {r['adapters']:18} {r['batches']:12} {r['tokens_per_s']:9.0f} tok/s")
    print(f"[lever-probe] written: {args.out / 'lever_probe.json'}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
