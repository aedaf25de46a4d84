"""One run, top to bottom: build its parts, evaluate the aligned model, train each method, keep one, evaluate
again, write. ``CalibrationRecipe`` holds the run's state; ``run(cfg)`` is the entry (``__main__``)."""

from __future__ import annotations

import json
import logging
import signal
import time
import warnings
from dataclasses import replace
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from calibration_lightning import evaluation
from calibration_lightning.auto import choose_method
from calibration_lightning.data.datamodule import MultipleChoiceDataModule
from calibration_lightning.data.sampling import rounds_per_pass
from calibration_lightning.lr_search import search_learning_rate
from calibration_lightning.models import loading
from calibration_lightning.module import CalibrationModule
from calibration_lightning.outputs import run_outputs, run_state
from calibration_lightning.outputs.checkpoints import ResumeCheckpoint, TrainingLength
from calibration_lightning.outputs.files import atomic_write, write_json
from calibration_lightning.outputs.fingerprint import fingerprint
from calibration_lightning.outputs.loggers import build_loggers
from calibration_lightning.schema import MethodConf, build
from calibration_lightning.selection import Backtracking, describe_training, keep_best, per_question
from calibration_lightning.startup import Job, check_job
from calibration_lightning.trainer import device, make_trainer

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Run ``cfg``; return what it writes to ``metrics.json`` (a finished run resumed: what that holds), whose
    ``objective`` sweeps optimise. Raises run_state.Preempted on SIGTERM or SIGINT (the last checkpoint saved)."""
    out_dir = Path(cfg.output_dir)
    # Our datamodule restores the data position itself (its state_dict); Lightning cannot tell.
    warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
    try:
        with run_state.stop_signals():
            job = check_job(cfg, out_dir)  # before any model loads; Hydra's callback ran it already (data kept)
            return CalibrationRecipe(cfg, job).run()
    except run_state.FinishedRun as e:
        log.warning("%s", e)
        return json.loads((out_dir / "metrics.json").read_text())
    except run_state.Preempted as e:
        e.out_dir = out_dir  # for the resume command (startup.reported prints it)
        raise
    finally:
        run_state.unlock_run_dir(out_dir)


class CalibrationRecipe:
    """The run's state: its config (``cfg``, validated; ``raw``, as composed, for what is written), data, model,
    loggers and trainers, and ``extra``, what metrics.json holds besides the evaluation blocks."""

    def __init__(self, raw: DictConfig, job: Job) -> None:
        self.raw, self.cfg, self.job = raw, job.config, job
        self.out_dir = Path(self.cfg.output_dir)
        self.is_zero = L.fabric.utilities.rank_zero.rank_zero_only.rank == 0  # set by the launch
        self.device = device(self.cfg.trainer)
        self.extra: dict = {}

    def run(self) -> dict:
        started = time.time()
        self.setup()
        before = self.score_before()
        after = self.train(before) if self.cfg.method.trained() else before
        if self.cfg.method.calibrator is not None:
            self.extra.update(self.cfg.method.calibrator.fit(after["val"]["letter_logits"], after["val"]["labels"]))
            after = evaluation.transform_logits(after, self.cfg.method.calibrator.transform, self.cfg.n_bins)
        if not self.is_zero:
            return {}
        return run_outputs.write_run(self.out_dir, self.raw, self.cfg, (before, after), self.dm.records, self.extra,
                                     self.loggers, started)  # fmt: skip

    def setup(self) -> None:
        """Tokenizer, datamodule, model (LoRA adapters, the seed's), loggers and the scoring Trainer."""
        cfg = self.cfg
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        source = build(cfg.model.loader, "model.loader")
        self.fingerprint = fingerprint(self.raw, self.job.splits, self.job.eval_sets, source, cfg.model.adapter)
        self.tokenizer = loading.load_tokenizer(source, cfg.model)
        self.dm = MultipleChoiceDataModule(self.job.splits, self.tokenizer, cfg.dataset, cfg.seed, self.job.eval_sets)
        sizes = ", ".join(f"{name} {len(records)}" for name, records in self.dm.records.items())
        dtype = str(loading.resolve_dtype(cfg.model.dtype, self.device)).removeprefix("torch.")
        quantize = loading.resolve_quantize(cfg.model.quantize, self.device)
        log.info("model %s, method %s; questions: %s; device %s, %s, quantization %s",
                 cfg.model.label, cfg.method.name, sizes, self.device, dtype, quantize)  # fmt: skip
        self.loggers = build_loggers(cfg.logger or {})  # before the model: a logger's missing package says so first
        L.seed_everything(cfg.seed, workers=True, verbose=False)  # LoRA init depends only on the seed
        tokens = cfg.dataset.batch_size * self.dm.longest("train")
        self.model = loading.load_model(source, cfg.model, self.device, tokens_per_batch=tokens)
        self.scoring = make_trainer(cfg.trainer, self.loggers, self.out_dir)
        self.autocast = loading.autocast_dtype(cfg.model)
        self.win_rate = None
        if cfg.win_rate.enabled and self.is_zero:
            from calibration_lightning.winrate.evaluate import WinRate

            self.win_rate = WinRate.from_config(cfg, self.model, self.tokenizer, self.device)

    def module(self, method: MethodConf | None = None, optim=None) -> CalibrationModule:
        """The LightningModule around the run's model: a scorer, or ``method``'s loss head with ``optim``."""
        loss = method.loss if method is not None else None
        return CalibrationModule(self.model, loss, self.dm.letter_ids, optim, self.cfg.n_bins, self.autocast)

    def score_before(self) -> dict:
        """Score the model as the run starts; write its predictions and diagrams (kept if training fails)."""
        cfg = self.cfg
        with loading.initial_scoring(self.model, cfg.model):  # the aligned model (or model.adapter) as loaded
            before = evaluation.evaluate(self.scoring, self.module(), self.dm, cfg.n_bins)
        self.extra.update(model=cfg.model.label, method=cfg.method.name, requested_method=cfg.method.name)
        self.extra["regime"] = evaluation.regime(before, cfg.n_bins, cfg.regime.tolerance)
        if self.dm.truncation:  # prompts cut to dataset.max_length, per split: how many, and what they lost
            self.extra["truncation"] = {"max_length": cfg.dataset.max_length, **self.dm.truncation}
        if self.is_zero:
            run_outputs.write_phase(self.out_dir, "before", before, self.dm.records, cfg.n_bins)
        if self.win_rate:
            scores = self.win_rate.evaluate("before", self.model, self.tokenizer,
                                            loading.initial_scoring(self.model, cfg.model))  # fmt: skip
            self.extra["win_rate"] = {"before": run_outputs.write_win_rate(self.out_dir, "before", *scores)}
        return before

    def train(self, before: dict) -> dict:
        """Fit each method from the same initial adapters, keep one (auto's rule), score it; returns its scores."""
        methods = self.cfg.method.trained()
        initial, several = loading.adapter_weights(self.model), len(methods) > 1
        fitted = {name: self.fit(name, m, initial, before.get("val"), several) for name, m in methods.items()}
        chosen = next(iter(fitted))
        if several:
            chosen = self.choose({name: f[2] for name, f in fitted.items()}, {name: f[3] for name, f in fitted.items()})
        scorer, trainer, kept_val, training, adapters = fitted[chosen]
        if several:  # the kept candidate's adapters, scored afresh
            loading.set_adapter_weights(self.model, adapters)
            scorer, trainer = self.module(), make_trainer(self.cfg.trainer, self.loggers, self.out_dir)
        self.extra["method"], self.extra["training"] = chosen, training
        merge = self.cfg.model.merge_for_eval
        with loading.merged_adapters(self.model, merge):  # the kept round's validation scores are known
            after = evaluation.evaluate(trainer, scorer, self.dm, self.cfg.n_bins, val=kept_val)
        if self.is_zero:
            atomic_write(self.out_dir / "adapter", self.model.save_pretrained, directory=True)
        if self.win_rate:
            merged = loading.merged_adapters(self.model, merge)
            scores = self.win_rate.evaluate("after", self.model, self.tokenizer, merged)
            self.extra["win_rate"]["after"] = run_outputs.write_win_rate(self.out_dir, "after", *scores)
        return after

    def choose(self, val: dict, training: dict) -> str:
        """``method=auto``: the candidate its rule keeps on the validation split (metrics.json ``auto``)."""
        cfg = self.cfg
        rule = choose_method(val, cfg.regime.accuracy_tolerance, cfg.method.accuracy_z, cfg.n_bins, cfg.bootstrap)
        self.extra["auto"] = {**rule, "training": training}
        metrics = rule["candidates"]
        log.info(
            "method=auto: validation conf-ECE %s (tied within the noise: %s), NLL %s, correct %s of %d; keeping %s",
            {n: round(m["conf_ece"], 4) for n, m in metrics.items()}, ", ".join(rule["tied"]),
            {n: round(m["nll"], 4) for n, m in metrics.items()}, {n: p["correct"] for n, p in rule["paired"].items()},
            len(next(iter(val.values()))["labels"]), rule["chosen"],
        )  # fmt: skip
        return rule["chosen"]

    def fit(self, name: str, method: MethodConf, initial: dict, before_val: dict | None, several: bool) -> tuple:
        """Fit ``method`` from the ``initial`` adapters (resuming when asked), its rate from ``method.lr_search``, its
        length from ``method.select``. Returns the module and Trainer, the kept round's validation scores, the
        training record and (``several``) a copy of the kept adapters."""
        cfg, s = self.cfg, method.select
        ckpt_dir = self.out_dir / "checkpoints" / (name if several else "")
        accumulate = int(cfg.trainer.get("accumulate_grad_batches") or 1)
        self.dm.round_batches = s.every_n_steps * accumulate if s and s.every_n_steps else 0  # a round's batches
        search = self.learning_rate(method, initial, self.out_dir / (f"lr_search_{name}.json" if several else
                                                                     "lr_search.json"))  # fmt: skip
        optim = replace(method.optim, lr=search["chosen"]) if search else method.optim
        loading.set_adapter_weights(self.model, initial)
        L.seed_everything(cfg.seed, workers=True, verbose=False)  # each candidate starts alike
        callbacks, baseline = list(method.callbacks), None
        if s and before_val is not None:
            baseline = before_val["metrics"][s.monitor.removeprefix("val/")]
            callbacks.append(Backtracking(s, ckpt_dir, baseline, per_question(before_val, s.monitor), initial))
        every, validates = cfg.trainer.get("checkpoint_every_n_steps") or 0, bool(self.dm.records["val"])
        callbacks += [TrainingLength(), ResumeCheckpoint(ckpt_dir, every, validates, self.fingerprint)]
        rounds = rounds_per_pass(len(self.dm.records["train"]), self.dm.batch_size, self.scoring.world_size,
                                 self.dm.round_batches)  # fmt: skip
        epochs = cfg.trainer.get("max_epochs") or method.epochs
        trainer = make_trainer(cfg.trainer, self.loggers, self.out_dir, callbacks, max_epochs=epochs * rounds)
        module = self.module(method, optim)
        self.model.train()  # from_pretrained returns eval mode; LoRA dropout must be live
        last = ckpt_dir / "last.ckpt"
        with run_state.training():
            try:
                trainer.fit(module, datamodule=self.dm, ckpt_path=last if cfg.resume and last.exists() else None,
                            weights_only=True)  # fmt: skip
            except SIGTERMException:  # Lightning's own SIGTERM stop (inside validation): the last checkpoint stands
                raise run_state.Preempted(signal.SIGTERM) from None
        if run_state.stop_requested():  # arrived after the last step: the round's checkpoint is already saved
            raise run_state.Preempted(run_state.stop_requested())
        run = next(c for c in trainer.callbacks if isinstance(c, TrainingLength)).epochs_run
        training = {"lr": optim.lr, "epochs_max": epochs, "rounds_per_epoch": rounds, "rounds_run": run}
        training.update(epochs_run=round(run / rounds, 4), kept_round=run)
        if search:
            training["lr_search"] = search
        kept_val = keep_best(trainer, module, training, s, initial, before_val, baseline) if s else None
        training["kept_epochs"] = round(training["kept_round"] / rounds, 4)  # passes over the training split
        log.info("%s", describe_training(method.name, training))
        if not several:
            return module, trainer, kept_val, training, None
        with loading.merged_adapters(self.model, False):  # a candidate is judged on validation only
            kept_val = evaluation.evaluate(trainer, module, self.dm, cfg.n_bins, val=kept_val, tests=False)["val"]
        return module, trainer, kept_val, training, loading.adapter_weights(self.model)

    def learning_rate(self, method: MethodConf, initial: dict, path: Path) -> dict | None:
        """``method.lr_search``'s result: searched and written to ``path``, or read back from it on resume (the search
        is deterministic, but repeating it would cost its probes again)."""
        if not method.lr_search:
            return None
        if self.cfg.resume and path.exists():
            return json.loads(path.read_text())
        monitor, mode = (method.select.monitor, method.select.mode) if method.select else ("val/nll", "min")

        def probe(lr: float, steps: int):
            """Train at ``lr`` for ``steps`` steps from the initial adapters and seed (every candidate sees the same
            batches); return the validation ``monitor`` and its per-question terms."""
            loading.set_adapter_weights(self.model, initial)
            L.seed_everything(self.cfg.seed, workers=True, verbose=False)
            module = self.module(method, replace(method.optim, lr=lr))
            self.model.train()
            fit = make_trainer(self.cfg.trainer, False, self.out_dir, list(method.callbacks), max_steps=steps,
                               max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
            fit.fit(module, datamodule=self.dm)
            scorer = make_trainer(self.cfg.trainer, False, self.out_dir)
            scored = evaluation.gathered(scorer, scorer.predict(module, dataloaders=self.dm.split_dataloader("val")))
            value = evaluation.metrics(scored, self.cfg.n_bins)[monitor.removeprefix("val/")]
            return float(value), per_question(scored, monitor)

        result = search_learning_rate(method.lr_search, method.optim.lr, probe, monitor, mode)
        loading.set_adapter_weights(self.model, initial)
        if self.is_zero:
            write_json(path, result)
        return result
