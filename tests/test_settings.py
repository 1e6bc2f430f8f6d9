"""Every service setting is a flag and a REVERIE_* variable: the flag wins, then the variable, then the
default; the tokens come from the environment only. Checked through the real `reverie` parser."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reverie.cli import _settings, build_parser
from reverie.service.settings import SECRETS, ServiceSettings


def settings_of(argv: list[str]) -> ServiceSettings:
    args = build_parser().parse_args(argv)
    return _settings(args, args.models if hasattr(args, "models") else args.run_dir)


def test_every_setting_but_the_tokens_has_a_flag():
    flags = {action.dest for action in build_parser()._subparsers._group_actions[0].choices["serve"]._actions}
    assert set(ServiceSettings.model_fields) - set(SECRETS) <= flags
    assert not set(SECRETS) & flags


def test_a_flag_wins_over_its_variable_which_wins_over_the_default(monkeypatch):
    assert settings_of(["serve", "--models", "m"]).max_batch == 1024
    monkeypatch.setenv("REVERIE_MAX_BATCH", "8")
    monkeypatch.setenv("REVERIE_SESSION_TTL_S", "2.5")
    monkeypatch.setenv("REVERIE_API_TOKEN", "secret")
    from_env = settings_of(["serve", "--models", "m"])
    assert (from_env.max_batch, from_env.session_ttl_s, from_env.api_token) == (8, 2.5, "secret")
    assert settings_of(["serve", "--models", "m", "--max-batch", "16"]).max_batch == 16


def test_up_follows_best_unless_told_otherwise(monkeypatch):
    assert settings_of(["up", "--run-dir", "r"]).follow == "best"
    assert settings_of(["serve", "--models", "m"]).follow == "latest"
    monkeypatch.setenv("REVERIE_FOLLOW", "latest")
    assert settings_of(["up", "--run-dir", "r"]).follow == "latest"
    assert settings_of(["up", "--run-dir", "r", "--follow", "best"]).follow == "best"


def test_a_bad_variable_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("REVERIE_MAX_BATCH", "many")
    with pytest.raises(ValidationError, match="max_batch"):
        settings_of(["serve", "--models", "m"])
    monkeypatch.setenv("REVERIE_MAX_BATCH", "4")
    monkeypatch.setenv("REVERIE_API_TOKEN", "")
    assert settings_of(["serve", "--models", "m"]).api_token is None  # empty: no token
