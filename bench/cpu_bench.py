"""CPU benchmarks: our code against the plain transformers + peft way of doing the same work.

    python bench/cpu_bench.py                     # every section on model=tiny and SmolLM2-135M
    python bench/cpu_bench.py --sections metrics,padding
    python bench/cpu_bench.py --sections default  # wall time and peak memory of the built-in default run (~4 min)

Prints one line per figure and the ratios the performance issue sets targets for:
  train   our LightningModule's training step (Trainer.fit, CFT loss) vs a hand-written loop doing the same
          loss on the same model and batches: the usual way (full logits, masked labels) and the lean way
          (last-position logits). ratio = ours / hand, target <= 1.10.
  score   our scoring (logits at the answer position only, length-sorted batches) vs full logits at every
          position on the same batches. ratio = full / ours, target >= 1.0.
  metrics conf_ece + classwise_ece on 1,000,000 predictions vs torchmetrics. target < 0.5 s.
  padding padded tokens / real tokens of our batches on bundled MMLU vs random batches. target <= 15%.
  default wall time and peak RSS of `python -m calibration_lightning` (a subprocess).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calibration_lightning.data.datamodule import MultipleChoiceDataModule  # noqa: E402
from calibration_lightning.data.sampling import LengthGroupedBatchSampler, LengthSortedBatches  # noqa: E402
from calibration_lightning.data.sources import bundled_mmlu  # noqa: E402
from calibration_lightning.data.splits import split_records  # noqa: E402
from calibration_lightning.models.loading import load_model, load_tokenizer  # noqa: E402
from calibration_lightning.schema import compose  # noqa: E402

DEFAULTS = compose("model=tiny")  # the config's objects: model, dataset (prompt), method (optimizer)
from calibration_lightning.models.sources import bundled_smollm2, tiny  # noqa: E402


def datamodule(tokenizer, n_train: int, n_test: int, batch: int) -> MultipleChoiceDataModule:
    splits = split_records(bundled_mmlu(max_question_chars=200), n_train, 0, n_test, seed=0)
    dataset = dataclasses.replace(DEFAULTS.dataset, batch_size=batch, eval_batch_size=16)
    dm = MultipleChoiceDataModule(splits, tokenizer, dataset)
    dm.setup()
    return dm


def median_time(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class StepTimer:
    """Lightning callback timing each training step from batch start to batch end."""

    def __init__(self):
        self.times, self._t = [], 0.0

    def on_train_batch_start(self, *args):
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter() - self._t)


def lightning_step(source: str, dm, steps: int) -> float:
    """Median seconds per step of our CalibrationModule (CFT) under Trainer.fit."""
    import lightning as L

    from calibration_lightning.losses.sft import CompletionSFT
    from calibration_lightning.module import CalibrationModule

    torch.manual_seed(0)
    model = load_model(source, DEFAULTS.model, "cpu")
    optim = dataclasses.replace(DEFAULTS.method.optim, lr=1e-4)
    module = CalibrationModule(model, CompletionSFT(), dm.letter_ids, optim, 10)
    module.model.train()
    timer = type("Timer", (StepTimer, L.Callback), {})()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        limit_train_batches=steps + 2,
    )
    trainer.fit(module, datamodule=dm)
    return statistics.median(timer.times[2:])


def hand_steps(source: str, batches: list, steps: int) -> tuple[float, float]:
    """Median seconds per step of hand-written transformers + peft loops: (usual way, last-logit way)."""
    torch.manual_seed(0)
    model = load_model(source, DEFAULTS.model, "cpu")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    it = iter(batches * 4)

    def usual():  # completion-only SFT the usual way: prompt + letter, labels masked, full logits
        b = next(it)
        ids = torch.cat([b["input_ids"], b["answer_token"][:, None]], 1)
        mask = torch.cat([b["attention_mask"], torch.ones_like(b["attention_mask"][:, :1])], 1)
        labels = torch.full_like(ids, -100)
        labels[:, -1] = ids[:, -1]
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def lean():  # the same loss from last-position logits, written by hand
        b = next(it)
        pos = (b["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        logits = model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=pos, logits_to_keep=1
        ).logits[:, -1]
        F.cross_entropy(logits.float(), b["answer_token"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return median_time(usual, 2, steps), median_time(lean, 2, steps)


def bench_train(name: str, source: str, steps: int, batch: int, rounds: int) -> None:
    """Our training step vs hand-written loops on the same model and batches, in alternating rounds so that
    the drift of a shared machine hits both sides; the ratio is the median of the per-round ratios."""
    tokenizer = load_tokenizer(source, DEFAULTS.model)
    dm = datamodule(tokenizer, batch * (steps + 2), 16, batch)
    batches = list(dm.train_dataloader())
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    # Every length-grouped batch has its own shape, and the first pass over a shape pays oneDNN's setup:
    # warm all of them on a throwaway model so that neither side is timed cold.
    warm = load_model(source, DEFAULTS.model, "cpu")
    for b in batches:
        warm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], logits_to_keep=1).logits.sum().backward()
        ids = torch.cat([b["input_ids"], b["answer_token"][:, None]], 1)
        warm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    del warm
    ours, usual, lean = [], [], []
    for _ in range(rounds):
        ours.append(lightning_step(source, dm, steps))
        u, ln = hand_steps(source, batches, steps)
        usual.append(u)
        lean.append(ln)
    med = statistics.median
    print(
        f"train/{name}: ours {med(ours) * 1e3:.1f} ms/step ({tokens / med(ours):.0f} tok/s) | hand usual "
        f"(full logits) {med(usual) * 1e3:.1f} ms | hand lean (last logit) {med(lean) * 1e3:.1f} ms "
        f"[{rounds} rounds]"
    )
    print(
        f"  ratio ours / hand-usual = {med(o / u for o, u in zip(ours, usual)):.3f}   ratio ours / hand-lean = "
        f"{med(o / h for o, h in zip(ours, lean)):.3f} (target <= 1.10)"
    )


def bench_score(name: str, source: str, n: int) -> None:
    """Seconds to score n questions: our module (answer-position logits) vs full logits at every position."""
    from calibration_lightning.module import CalibrationModule

    tokenizer = load_tokenizer(source, DEFAULTS.model)
    dm = datamodule(tokenizer, 0, n, 8)
    model = load_model(source, DEFAULTS.model, "cpu").eval()
    module = CalibrationModule(model, None, dm.letter_ids, None, 10).eval()
    loader = dm.split_dataloader("test")
    letters = torch.tensor(dm.letter_ids)

    @torch.inference_mode()
    def ours():
        for b in loader:
            module._score_batch(b)

    @torch.inference_mode()
    def full():  # what harness-style scoring computes: logits at every position, then the last one is read
        for b in loader:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            torch.softmax(logits[:, -1][:, letters].float(), -1)

    t_ours, t_full = median_time(ours, 1, 3), median_time(full, 1, 3)
    print(
        f"score/{name}: ours {n / t_ours:.1f} q/s | full logits {n / t_full:.1f} q/s | "
        f"ratio full / ours = {t_full / t_ours:.2f} (target >= 1.0)"
    )


def bench_metrics() -> None:
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

    from calibration_lightning import classwise_ece, conf_ece

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(1_000_000, 4, generator=g) * 2, -1)
    labels = torch.randint(0, 4, (1_000_000,), generator=g)
    ours = median_time(lambda: (conf_ece(probs, labels), classwise_ece(probs, labels)), 1, 5)

    def reference():
        multiclass_calibration_error(probs, labels, num_classes=4, n_bins=10)
        [binary_calibration_error(probs[:, j], (labels == j).long(), n_bins=10) for j in range(4)]

    theirs = median_time(reference, 1, 3)
    print(
        f"metrics: conf_ece + classwise_ece on 1,000,000 x 4: ours {ours:.3f} s | torchmetrics {theirs:.3f} s | "
        f"speed-up {theirs / ours:.1f}x (target ours < 0.5 s)"
    )


def bench_padding() -> None:
    tokenizer = load_tokenizer(bundled_smollm2(), DEFAULTS.model)
    for chars, label in ((200, "default subset (<= 200 chars)"), (None, "all 14,042 questions")):
        splits = split_records(bundled_mmlu(max_question_chars=chars), 0.6, 0.0, 0.4, seed=0)
        dm = MultipleChoiceDataModule(
            splits, tokenizer, dataclasses.replace(DEFAULTS.dataset, batch_size=8, eval_batch_size=16, max_length=4096)
        )
        dm.setup()
        train = [len(e.input_ids) for e in dm.encoded["train"].examples]
        test = [len(e.input_ids) for e in dm.encoded["test"].examples]

        def waste(lengths, batches):
            padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
            real = sum(lengths[i] for b in batches for i in b)
            return (padded - real) / real

        ours_train = waste(train, LengthGroupedBatchSampler(train, 8, seed=0).batches(0))
        ours_test = waste(test, list(LengthSortedBatches(test, 16)))
        order = list(range(len(train)))
        random.Random(0).shuffle(order)
        random_train = waste(train, [order[i : i + 8] for i in range(0, len(order), 8)])
        print(
            f"padding/{label}: train {ours_train:.1%} (random batches {random_train:.1%}) | "
            f"scoring {ours_test:.1%} (target <= 15%)"
        )


def bench_default() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "calibration_lightning", f"hydra.run.dir={tmp}/run"],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"default run: wall {wall:.0f} s ({wall / 60:.1f} min) | peak RSS {peak:.2f} GiB (target <= 5 min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="train,score,metrics,padding")
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (tiny; SmolLM2 uses 1)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    sections = args.sections.split(",")
    sources = {"tiny": tiny, "smollm2": bundled_smollm2}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    for name in args.models.split(","):
        source = sources[name]()
        if "train" in sections:
            bench_train(
                name,
                source,
                args.steps if name == "smollm2" else 4 * args.steps,
                8,
                args.rounds if name == "tiny" else 1,
            )
        if "score" in sections:
            bench_score(name, source, 64 if name == "smollm2" else 256)
    if "metrics" in sections:
        bench_metrics()
    if "padding" in sections:
        bench_padding()
    if "default" in sections:
        bench_default()


if __name__ == "__main__":
    main()
