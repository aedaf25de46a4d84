"""The one atomic writer: a folder written through it (a saved adapter) keeps the modes every other output has."""

from __future__ import annotations

import os
import stat

import torch
from safetensors.torch import save_file

from calibration_lightning.outputs.files import atomic_write, write_text


def test_a_folder_written_atomically_gets_the_umask_modes_of_every_output(tmp_path):
    def save(folder):
        save_file({"w": torch.ones(2)}, str(folder / "adapter_model.safetensors"))  # safetensors writes 0600
        (folder / "adapter_config.json").write_text("{}")

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "adapter", save, directory=True)
        write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(old)
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "metrics.json", *(tmp_path / "adapter").iterdir()]
    }
    assert modes == {"metrics.json": 0o644, "adapter_model.safetensors": 0o644, "adapter_config.json": 0o644}
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o755
