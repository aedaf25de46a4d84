"""Secrets on the command line and in the config: any key style, URL passwords, any characters; never written
to a run's files nor printed in an error line."""

import os

import pytest
from omegaconf import OmegaConf

from calibration_lightning.outputs.run_outputs import redacted_config
from calibration_lightning.redaction import hide_secret_overrides, is_secret_key, scrub
from tests.helpers import call_main, cli

NASTY = "s3,cr=et]'x\"y"  # every character Hydra's override grammar treats specially


@pytest.fixture()
def fresh_env(monkeypatch):
    for var in [k for k in os.environ if k.startswith("CALIBRATION_LIGHTNING_SECRET_")]:
        monkeypatch.delenv(var)
    monkeypatch.setattr(os, "environ", dict(os.environ))


@pytest.mark.parametrize(
    "key",
    ["accessToken", "access_token", "ACCESS-TOKEN", "apiKey", "APIKey", "api-key", "password", "dbPassword",
     "secret", "clientSecret", "judge.hf_token", "accesstoken", "Authorization", "private_key"],
)  # fmt: skip
def test_secret_keys_in_any_case_style(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["max_new_tokens", "api_key_env", "tokenizer", "apiKeyEnv", "monkey", "author"])
def test_keys_that_are_not_secrets(key):
    assert not is_secret_key(key)


def test_values_with_any_character_leave_the_command_line_before_hydra_parses_it(fresh_env):
    argv = [
        "--cfg",
        "job",
        "model=tiny",
        f"+judge.accessToken={NASTY}",
        "+judge.base_url=https://user:PA55@host.example/v1",
        "+judge.API-KEY='quoted,value'",
        "-cn",
        "config",
    ]
    hidden = hide_secret_overrides(argv)
    text = " ".join(hidden)
    assert NASTY not in text and "PA55" not in text and "quoted,value" not in text
    assert hidden[:3] == argv[:3] and hidden[-2:] == ["-cn", "config"]
    env = {k: v for k, v in os.environ.items() if k.startswith("CALIBRATION_LIGHTNING_SECRET_")}
    assert sorted(env.values()) == sorted([NASTY, "https://user:PA55@host.example/v1", "quoted,value"])


def test_an_error_line_never_prints_a_secret(fresh_env, tmp_path):
    shown = call_main(f"+judge.clientSecret={NASTY}", "method=rcfx", f"hydra.run.dir={tmp_path}")
    assert shown.returncode == 2 and "Could not find 'method/rcfx'" in shown.stderr
    assert "s3,cr" not in shown.stdout + shown.stderr


def test_url_passwords_are_redacted_in_written_config():
    cfg = OmegaConf.create(
        {"judge": {"base_url": "https://user:PA55@host/v1", "plain": "https://host/v1?a=b@c", "apiKey": "k"}}
    )
    assert scrub({"u": "postgres://me:pw@db:5432/x"}) == {"u": "postgres://me:<redacted>@db:5432/x"}
    assert redacted_config(cfg) == (
        "judge:\n  base_url: https://user:<redacted>@host/v1\n  plain: https://host/v1?a=b@c\n  apiKey: <redacted>\n"
    )


def test_no_secret_in_any_file_of_a_run_or_its_output(tmp_path):
    out = tmp_path / "run"
    secrets = ("tok,en=9]'q", "PA55w0rd")
    result = cli(
        "model=tiny",
        "method=none",
        "dataset.split.train=8",
        "dataset.split.val=8",
        "dataset.split.test=8",
        "logger=wandb",
        f"+judge.accessToken={secrets[0]}",
        f"+judge.base_url=https://user:{secrets[1]}@host/v1",
        f"hydra.run.dir={out}",
        env={"WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), f"a secret leaked into {path}"
    assert "accessToken: <redacted>" in (out / "config.yaml").read_text()
    assert not any(s in result.stdout + result.stderr for s in secrets)
