"""What a checkpoint was trained with, stored in the checkpoint itself: every key of the composed config but
``NEUTRAL`` (the keys that change no reported number, each with its reason) and the content of its data and of its
model's weights. ``resume=true`` with anything else is refused, naming each difference (docs/resume.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from calibration_lightning.outputs.files import write_json
from calibration_lightning.redaction import scrub

NEUTRAL = {  # key (or section) -> why it changes no reported number
    "output_dir": "where the run writes",
    "resume": "whether the run continues",
    "logger": "where the numbers are sent, not what they are",
    "trainer.enable_progress_bar": "the terminal display",
    "trainer.log_every_n_steps": "how often the training loss is logged, not what metrics.json holds",
    "trainer.checkpoint_every_n_steps": "when last.ckpt is saved: a save changes nothing a run computes (the "
    "kill-point tests resume from every instant to the uninterrupted result)",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model")


def settings(cfg: DictConfig) -> dict[str, object]:
    """Every key of ``cfg`` (the composed config without ``hydra``), resolved and flattened to dotted keys, secrets
    blanked, ``NEUTRAL`` left out."""

    def flatten(node, prefix: str) -> dict:
        if isinstance(node, dict) and node:
            return {k: v for key, child in node.items() for k, v in flatten(child, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    flat = flatten(scrub(OmegaConf.to_container(cfg, resolve=True)), "")
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NEUTRAL)}


def records_hash(records: list) -> str:
    """sha256 of a split's questions, as read (id, question, options, answer, subject), whatever file held them."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r.id, r.question, list(r.choices), r.answer, r.subject]).encode() + b"\n")
    return digest.hexdigest()


def file_hash(path: Path, cache: Path) -> str:
    """sha256 of a file's bytes, kept in ``cache`` (a JSON file) by path, size and modification time. A Hugging
    Face cache entry is a link to a blob named by its sha256: that name is the hash."""
    real = Path(os.path.realpath(path))
    if len(real.name) == 64 and real.parent.name == "blobs" and all(c in "0123456789abcdef" for c in real.name):
        return real.name
    stat = real.stat()
    key = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        known[key] = digest.hexdigest()
        try:
            write_json(cache, known)
        except OSError:  # a read-only cache only costs hashing again next time
            pass
    return known[key]


def weights_hash(source: str, adapter: str | None, cache: Path) -> str:
    """One sha256 over the model folder's weight, config and tokenizer files (and ``adapter``'s), by name; for a hub
    id not in a local folder, its files in the Hugging Face cache (what the run loaded)."""
    folders = [source, *([adapter] if adapter else [])]
    digest = hashlib.sha256()
    for folder in folders:
        root = Path(folder).expanduser()
        if not root.is_dir():
            root = hub_snapshot(folder)
        if root is None:
            digest.update(f"{folder}: not in a local folder or cache".encode())
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
            digest.update(f"{path.relative_to(root)}:{file_hash(path, cache)}\n".encode())
    return digest.hexdigest()


def hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub model the Hugging Face cache holds (None if it holds none)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, not a hub id
        return None


def fingerprint(cfg: DictConfig, splits, eval_sets: dict, source: str, adapter: str | None) -> dict:
    """``{"settings": {...}, "data": {split: sha256}, "weights": sha256}``: what a checkpoint stores."""
    from calibration_lightning.bundled import cache_dir

    sets = {"train": splits.train, "val": splits.val, "test": splits.test, **eval_sets}
    return {
        "settings": settings(cfg),
        "data": {name: records_hash(records) for name, records in sets.items()},
        "weights": weights_hash(source, adapter, cache_dir() / "file_hashes.json"),
    }


def differences(saved: dict, now: dict) -> list[str]:
    """Each way ``now`` differs from the fingerprint a checkpoint holds, in words."""
    found = []
    old, new = saved.get("settings", {}), now["settings"]
    for key in sorted(old.keys() | new.keys()):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            found.append(f"{key}: {old.get(key, '<unset>')!r} there, {new.get(key, '<unset>')!r} now")
    for name in sorted(saved.get("data", {}).keys() | now["data"].keys()):
        if saved.get("data", {}).get(name) != now["data"].get(name):
            found.append(f"the {name} questions differ from those it was trained with (the data's content changed)")
    if saved.get("weights") != now["weights"]:
        found.append("the model's weight files differ from those it was trained with")
    return found
