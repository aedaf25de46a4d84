"""Secrets on the command line and in the config: keys by their words in any case style and plural, secrets
inside dict and list values, URL passwords with any character; never written to a run's files nor printed in an
error line, while ordinary keys (``pad_token``, ``max_tokens``) stay visible."""

import os

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from calibration_lightning.outputs.run_outputs import redacted_config
from calibration_lightning.redaction import hide_secret_overrides, is_secret_key, redact, scrub, scrub_text
from calibration_lightning.schema import CONF_DIR
from calibration_lightning.startup import one_line
from tests.conftest import TINY_SPLIT
from tests.helpers import call_main, cli

NASTY = "s3,cr=et]'x\"y"  # every character Hydra's override grammar treats specially
ENV = "CALIBRATION_LIGHTNING_SECRET_"


@pytest.fixture()
def fresh_env(monkeypatch):
    """No hidden secret in the environment when the test starts, none it hid left after it."""
    for var in [k for k in os.environ if k.startswith(ENV)]:
        monkeypatch.delenv(var)
    yield
    for var in [k for k in os.environ if k.startswith(ENV)]:
        del os.environ[var]


SECRET_KEYS = [
    "passWord", "PassPhrase", "pass_phrase", "api_keys", "apiKeys", "secrets", "clientSecret", "wandbapikey",
    "WANDB_API_KEY", "X-Api-Key", "password", "PASSWORD", "dbPassword", "passwd", "db_pass", "pass", "pwd",
    "token", "tokens", "hf_token", "HF_TOKEN", "accessToken", "access_token", "ACCESS-TOKEN", "accesstoken",
    "authtoken", "refresh_tokens", "auth", "basic_auth", "Authorization", "credentials", "gcp_credential",
    "private_key", "privateKey", "ssh_keys", "key", "oauth", "judge.hf_token", "APIKey", "api-key",
]  # fmt: skip
ORDINARY_KEYS = [
    "pad_token", "eos_token", "bos_token", "unk_token", "padToken", "max_tokens", "max_new_tokens", "maxNewTokens",
    "tokenizer", "tokens_per_batch", "eval_tokens_per_batch", "eos_token_id", "api_key_env", "apiKeyEnv",
    "password_file", "secret_name", "token_path", "keep", "monkey", "passes", "num_passes", "bypass", "compass",
    "passage", "author", "authors", "pass_rate", "key_value", "tokenize", "judge.max_new_tokens",
]  # fmt: skip


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys_by_their_words_in_any_style_and_plural(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ORDINARY_KEYS)
def test_ordinary_keys_stay_visible(key):
    assert not is_secret_key(key)


def test_no_key_of_the_shipped_configs_is_taken_for_a_secret():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides in (["judge=openai", "win_rate=on", "logger=wandb"], ["method=auto", "model=hf"]):
            cfg = OmegaConf.to_container(compose("config", overrides=overrides), resolve=False)
            assert scrub(cfg) == cfg, overrides


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://u:PW@h/v1", "https://u:<redacted>@h/v1"),
        ("https://u:p/w@h/x", "https://u:<redacted>@h/x"),  # a "/" in the password
        ("postgres://me:p@ss:w0rd@db:5432/x", "postgres://me:<redacted>@db:5432/x"),  # "@" and ":"
        ("redis://:p%40x@host", "redis://:<redacted>@host"),  # no user, a percent-escape
        ("see https://u:pw@h and ftp://a:b@c", "see https://u:<redacted>@h and ftp://a:<redacted>@c"),
        ("Value 'https://u:pw@h' of type 'str'", "Value 'https://u:<redacted>@h' of type 'str'"),
        ("https://host/v1?a=b@c", "https://host/v1?a=b@c"),  # no password
        ("https://host:8080/v1", "https://host:8080/v1"),
        ("mailto:a@b.org", "mailto:a@b.org"),
    ],
)
def test_url_passwords_with_any_character_in_any_position(text, shown):
    assert scrub_text(text) == shown


def test_values_with_any_character_leave_the_command_line_before_hydra_parses_it(fresh_env):
    argv = [
        "--cfg",
        "job",
        "model=tiny",
        f"+judge.accessToken={NASTY}",
        "+judge.base_url=https://user:PA55/w@host.example/v1",
        "+judge.API-KEY='quoted,value'",
        "+judge.pad_token=<pad>",
        "-cn",
        "config",
    ]
    hidden = hide_secret_overrides(argv)
    text = " ".join(hidden)
    assert NASTY not in text and "PA55" not in text and "quoted,value" not in text
    assert hidden[:3] == argv[:3] and hidden[-3:] == ["+judge.pad_token=<pad>", "-cn", "config"]
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV)}
    assert sorted(env.values()) == sorted([NASTY, "https://user:PA55/w@host.example/v1", "quoted,value"])


def test_a_hidden_secret_never_replaces_one_already_hidden(fresh_env, monkeypatch):
    monkeypatch.setenv(f"{ENV}1", "held")  # a gap: _0 is free, _1 is taken
    hidden = hide_secret_overrides(["+judge.api_key=a", "+judge.token=b"])
    assert hidden == [f"+judge.api_key='${{oc.env:{ENV}0}}'", f"+judge.token='${{oc.env:{ENV}2}}'"]
    assert (os.environ[f"{ENV}0"], os.environ[f"{ENV}1"], os.environ[f"{ENV}2"]) == ("a", "held", "b")


@pytest.mark.parametrize(
    ("override", "value"),
    [
        ("+judge.headers={Authorization: 'Bearer x1', Accept: json}", {"Authorization": "Bearer x1", "Accept": "json"}),
        ("+judge.clients=[{id: 1, token: t0k}]", [{"id": 1, "token": "t0k"}]),
        ("+judge.mirrors=[https://h/a, 'https://u:p/w@h/b']", ["https://h/a", "https://u:p/w@h/b"]),
        ("+judge.api_keys=[k1,k2]", ["k1", "k2"]),
        ("+judge.api_key='[k1]'", "[k1]"),  # quoted: the user asked for a string
    ],
)
def test_secrets_inside_dict_and_list_values_are_hidden_and_keep_their_type(fresh_env, override, value):
    (hidden,) = hide_secret_overrides([override])
    key = override.split("=", 1)[0]
    assert hidden.startswith(f"{key}='${{oc.")
    assert OmegaConf.to_container(OmegaConf.create({"v": hidden.split("=", 1)[1][1:-1]}), resolve=True)["v"] == value


def test_dicts_and_lists_without_a_secret_stay_on_the_command_line(fresh_env):
    argv = ["+judge.headers={Accept: json, max_tokens: 3}", "+judge.hosts=[https://h/a, b]"]
    assert hide_secret_overrides(argv) == argv


def test_an_error_message_loses_every_piece_of_a_hidden_value(fresh_env):
    hide_secret_overrides(["+judge.headers={Authorization: 'Bearer HDR7', n: 12}", "dataset.path=https://u:PW/x@h/d"])
    shown = redact("Value '{'Authorization': 'Bearer HDR7'}' is not an int; /cwd/https:/u:PW/x@h/d missing")
    assert shown == "Value '{'Authorization': '<redacted>'}' is not an int; /cwd/https:/u:<redacted>@h/d missing"
    assert redact("n_bins=12 and 1212") == "n_bins=12 and 1212"  # pieces under 3 characters, inside words: kept


@pytest.mark.parametrize(
    ("overrides", "start"),
    [
        (["n_bins=https://u:PW/x@h"], "error: While dereferencing interpolation"),
        (["dataset=jsonl", "dataset.path=https://u:PW/x@h/data.jsonl"], "error: /"),
        (["method=https://u:PW/x@h"], "error: In 'config': Could not find 'method/<redacted>'"),
        (["n_bins={Authorization: 'Bearer PW/x'}"], "error: While dereferencing interpolation"),
        ([f"+judge.clientSecret={NASTY}", "method=rcfx"], "error: In 'config': Could not find 'method/rcfx'"),
    ],
)
def test_an_error_line_never_prints_a_secret(fresh_env, tmp_path, overrides, start):
    shown = call_main("model=tiny", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert shown.returncode == 2 and shown.stderr.startswith(start) and shown.stderr.count("\n") == 1, shown.stderr
    assert "PW/x" not in shown.stdout + shown.stderr and "s3,cr" not in shown.stderr
    assert not (tmp_path / "run").exists()


def test_one_line_redacts_url_passwords_that_were_not_on_the_command_line(fresh_env):
    assert one_line("cannot read\n  https://me:hunter2@db/x") == "cannot read https://me:<redacted>@db/x"


def test_written_configs_blank_secrets_and_keep_ordinary_keys(tmp_path):
    from calibration_lightning.outputs.csv_logger import ResumableCSVLogger
    from calibration_lightning.outputs.loggers import publish_run

    cfg = OmegaConf.create(
        {
            "judge": {
                "base_url": "https://user:PA55/w@host/v1",
                "plain": "https://host/v1?a=b@c",
                "passWord": "pw1",
                "headers": {"Authorization": "Bearer b2", "Accept": "json"},
                "api_keys": ["k3", "k4"],
                "mirrors": ["https://u:p@5@h"],
                "pad_token": "<pad>",
            }
        }
    )
    expected = {
        "judge": {
            "base_url": "https://user:<redacted>@host/v1",
            "plain": "https://host/v1?a=b@c",
            "passWord": "<redacted>",
            "headers": {"Authorization": "<redacted>", "Accept": "json"},
            "api_keys": "<redacted>",
            "mirrors": ["https://u:<redacted>@h"],
            "pad_token": "<pad>",
        }
    }
    assert yaml.safe_load(redacted_config(cfg)) == expected
    logger = ResumableCSVLogger(str(tmp_path))
    publish_run([logger], yaml.safe_load(redacted_config(cfg)), {}, {})  # what a run sends to every logger
    assert yaml.safe_load((tmp_path / "logs" / "hparams.yaml").read_text()) == expected


@pytest.mark.slow
def test_no_secret_shape_in_any_file_of_a_run_or_its_output(tmp_path):
    """About 40 s: every secret shape of the issue at once, through the CLI, W&B (offline) included."""
    out = tmp_path / "run"
    secrets = ("PWone1", "PWtwo2", "KEYthree3", "KEYfour4", "SECfive5", "WANDsix6", "HDRseven7", "eig@ht8", "ni:ne9")
    result = cli(
        "model=tiny",
        "method=none",
        *TINY_SPLIT,
        "logger=wandb",
        "judge=openai",  # its headers (a dict) and base_url; Hydra's own env_set (written to .hydra/hydra.yaml)
        f"+hydra.job.env_set.passWord={secrets[0]}",
        f"+hydra.job.env_set.PassPhrase={secrets[1]}",
        f"+hydra.job.env_set.api_keys='{secrets[2]} {secrets[3]}'",
        f"+hydra.job.env_set.secrets={secrets[4]}",
        f"+hydra.job.env_set.wandbapikey={secrets[5]}",
        f"+judge.headers={{Authorization: 'Bearer {secrets[6]}'}}",
        f"+hydra.job.env_set.mirror=https://u:PW/{secrets[7]}@h.example/x",
        f"judge.base_url=https://u:{secrets[8]}@h/v1",
        "+hydra.job.env_set.pad_token=PADVISIBLE",
        f"hydra.run.dir={out}",
        env={"WANDB_MODE": "offline"},
        forked=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "config.yaml"} <= {str(p.relative_to(out)) for p in files}
    for path in files:
        data = path.read_bytes()
        assert not any(s.encode() in data for s in secrets), f"a secret leaked into {path}"
    assert not any(s in result.stdout + result.stderr for s in secrets)
    written = yaml.safe_load((out / "config.yaml").read_text())["judge"]
    assert written["headers"] == {"Authorization": "<redacted>"} and "<redacted>" in written["base_url"]
    assert "pad_token: PADVISIBLE" in (out / ".hydra" / "hydra.yaml").read_text()
