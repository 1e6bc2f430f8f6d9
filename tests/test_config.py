"""One source of configuration: precedence of defaults, presets, --set overrides and CLI flags, and validation."""

from __future__ import annotations

import pytest

from reverie.trainer.config import PRESETS, Config, UpdateCounts, build_config, parse_override


def test_defaults_without_preset_or_overrides():
    assert build_config() == Config()


def test_preset_overrides_defaults_and_leaves_the_rest():
    cfg = build_config("smoke")
    assert cfg.hidden_dim == PRESETS["smoke"]["hidden_dim"] != Config().hidden_dim
    assert cfg.gamma == Config().gamma  # not in the preset


def test_set_overrides_beat_the_preset_and_later_ones_win():
    cfg = build_config("smoke", ["hidden_dim=48", "horizon=7", "horizon=9"])
    assert cfg.hidden_dim == 48
    assert cfg.horizon == 9
    assert cfg.batch_size == PRESETS["smoke"]["batch_size"]


def test_explicit_fields_beat_overrides_and_none_means_unset():
    """CLI flags (--steps, --seed, --env) win over --set; a flag left at None does not erase anything."""
    cfg = build_config("cartpole", ["total_steps=100", "seed=3"], total_steps=200, seed=None, env_id=None)
    assert cfg.total_steps == 200
    assert cfg.seed == 3
    assert cfg.env_id == "CartPole-v1"
    assert build_config("cartpole", total_steps=None).total_steps == PRESETS["cartpole"]["total_steps"]


@pytest.mark.parametrize("item, key, value", [
    ("gamma=0.9", "gamma", 0.9),
    ("batch_size=64", "batch_size", 64),
    ("symlog=false", "symlog", False),
    ("critic_target_clip=null", "critic_target_clip", None),
    ("env_id=Pendulum-v1", "env_id", "Pendulum-v1"),
    ("env_id=ALE/Pong-v5", "env_id", "ALE/Pong-v5"),
    ('update_schedule=[{"from_step": 0, "actor": 2}]', "update_schedule", [{"from_step": 0, "actor": 2}]),
    ("a=b=c", "a", "b=c"),
])
def test_parse_override_reads_json_else_string(item, key, value):
    assert parse_override(item) == (key, value)


def test_json_values_reach_the_config_typed():
    cfg = build_config(None, ["symlog=false", "critic_target_clip=100", "target_entropy=-0.5",
                              'update_schedule=[{"from_step": 0}, {"from_step": 500, "actor": 3}]'])
    assert cfg.symlog is False
    assert cfg.critic_target_clip == 100
    assert cfg.target_entropy == -0.5
    assert cfg.update_schedule[1] == UpdateCounts(from_step=500, actor=3)


@pytest.mark.parametrize("item", ["novalue", "=5"])
def test_malformed_override_raises(item):
    with pytest.raises(ValueError):
        parse_override(item)


def test_unknown_key_and_unknown_preset_raise_value_error():
    with pytest.raises(ValueError, match="unknown config key"):
        build_config(None, ["hiden_dim=3"])
    with pytest.raises(ValueError, match="unknown preset.*cartpole"):
        build_config("cartpol")


def test_invalid_values_raise_value_error():
    """Pydantic's ValidationError is a ValueError, which the CLI turns into exit code 2."""
    with pytest.raises(ValueError):
        build_config(None, ["batch_size=0"])
    with pytest.raises(ValueError):
        build_config(None, ["gamma=1.5"])
    cfg = Config()
    with pytest.raises(ValueError):
        cfg.horizon = 0  # validate_assignment


@pytest.mark.parametrize("schedule", [
    [],
    [{"from_step": 10}],
    [{"from_step": 0}, {"from_step": 0}],
    [{"from_step": 0}, {"from_step": 500}, {"from_step": 200}],
    [{"from_step": 0, "actor": -1}],
    [{"from_step": 0, "actors": 2}],
])
def test_update_schedule_validation(schedule):
    """Must start at from_step 0, increase strictly, have non-negative counts and no unknown keys."""
    with pytest.raises(ValueError):
        Config(update_schedule=schedule)


def test_valid_update_schedule_is_accepted():
    cfg = Config(update_schedule=[{"from_step": 0}, {"from_step": 100, "world_model": 2, "critic": 0}])
    assert [c.from_step for c in cfg.update_schedule] == [0, 100]
    assert cfg.update_schedule[1].critic == 0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name):
    """A typo in a preset's keys would otherwise only show when someone uses it."""
    cfg = build_config(name).model_dump()
    for key, value in PRESETS[name].items():
        assert cfg[key] == value


def test_config_json_round_trip():
    """Resume reloads config.json: the saved config must come back equal, schedule entries included."""
    cfg = build_config("pendulum", ['update_schedule=[{"from_step": 0}, {"from_step": 9, "actor": 2}]'],
                       critic_target_clip=50.0)
    assert Config.model_validate_json(cfg.model_dump_json()) == cfg


def test_seed_given_structure_is_the_default():
    """The seed fixes these in its diagrams; the defaults keep them."""
    cfg = Config()
    assert (cfg.horizon, cfg.state_dim, cfg.feature_dim, cfg.grad_clip) == (15, 64, 256, 1.0)
    assert cfg.gamma == 0.99


def test_seed_values_preset_is_the_seeds_stated_numbers():
    """Diagram 5's phases (warmup 0-5k, transition 5k-10k) and multi-update schedule (2/1/1 before 50k,
    1/2/2 after), the learning rates its remedies start from, its entropy weight, its plain losses."""
    from reverie.trainer.schedule import Schedule

    cfg = build_config("seed_values")
    assert (cfg.warmup_steps, cfg.transition_steps) == (5000, 5000)
    assert (cfg.world_model_lr, cfg.actor_lr, cfg.critic_lr, cfg.entropy_coef) == (1e-4, 3e-5, 3e-5, 0.01)
    assert cfg.return_norm is False and cfg.symlog is False
    assert build_config("seed_values", ["pixels=true"]).symlog is False  # raw returns on frames too
    schedule = Schedule(cfg)
    assert schedule.critic_real_mix(5000) == 1.0 and schedule.critic_real_mix(7500) == 0.5
    assert schedule.critic_real_mix(10_000) == 0.0
    early, late = schedule.updates(20_000), schedule.updates(60_000)
    assert (early.world_model, early.actor, early.critic) == (2, 1, 1)
    assert (late.world_model, late.actor, late.critic) == (1, 2, 2)
    assert (schedule.updates(100).actor, schedule.updates(100).critic) == (0, 0)  # warmup


def test_every_departure_from_the_seed_is_stated_with_a_reason():
    """seed_deviations (what the README table and `reverie config` show) lists exactly the keys whose
    default differs from the seed preset, each with a reason."""
    from reverie.trainer.config import seed_deviations

    deviations = seed_deviations()
    default, seed = Config().model_dump(), build_config("seed_values").model_dump()
    assert set(deviations) == {k for k in default if default[k] != seed[k]}
    assert all(len(why) > 20 for _, _, why in deviations.values())


def test_resolve_config_names_where_each_value_came_from():
    from reverie.trainer.config import resolve_config

    cfg, sources = resolve_config("cartpole", ["horizon=9"], seed=4)
    assert sources["horizon"] == "--set" and sources["seed"] == "flag"
    assert sources["warmup_steps"] == "preset cartpole" and sources["gamma"] == "default"
    assert (cfg.horizon, cfg.seed, cfg.warmup_steps) == (9, 4, 500)
    # A frame run's own defaults are named as what they are; what the run sets itself stays its own.
    cfg, sources = resolve_config(None, ["pixels=true", "eval_every=100"])
    assert (cfg.sequence_mode, cfg.replay_ratio, cfg.eval_every) == (True, 0.25, 100)
    assert sources["sequence_mode"] == sources["replay_ratio"] == "frames default" and sources["eval_every"] == "--set"
    # Raw returns on vectors (measured there); frames keep the symlog they were measured with.
    assert (cfg.symlog, sources["symlog"], Config().symlog) == (True, "frames default", False)
    assert resolve_config()[1]["sequence_mode"] == "default"


def test_the_readme_table_lists_every_departure_from_the_seed():
    """The table of departures (docs/learning.md) is written by hand; it must not fall behind the config's notes."""
    from pathlib import Path

    from reverie.trainer.config import STRUCTURAL_DEPARTURES, seed_deviations

    readme = (Path(__file__).resolve().parents[1] / "docs" / "learning.md").read_text()
    missing = [key for key in seed_deviations() if f"| `{key}` |" not in readme]
    missing += [name for name in STRUCTURAL_DEPARTURES if f"| {name} |" not in readme]
    assert missing == []


def test_reverie_config_names_value_source_and_the_seeds_value(capsys):
    import json

    from reverie.cli import main

    assert main(["config", "--preset", "cartpole", "--set", "horizon=9", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["horizon"] == {"block": "actor and critic (diagrams 2 and 3)", "value": 9, "source": "--set",
                               "description": rows["horizon"]["description"]}
    assert rows["warmup_steps"]["source"] == "preset cartpole" and rows["warmup_steps"]["seed"] == 5000
    assert rows["actor_lr"]["value"] == 3e-4 and rows["actor_lr"]["seed"] == 3e-5
    assert all(row["description"] for row in rows.values())
    assert main(["config", "--preset", "seed_values"]) == 0
    text = capsys.readouterr().out
    assert "actor_lr" in text and "[seed:" not in text  # the seed preset departs from nothing
    assert text.index("[run]") < text.index("env_id") < text.index("[actor and critic (diagrams 2 and 3)]") < text.index("actor_lr")


def test_the_config_blocks_hold_every_key_once():
    """`reverie config` prints by block: every key in exactly one, none that is not a key."""
    from reverie.trainer.config import BLOCKS, Config

    keys = [key for block in BLOCKS.values() for key in block]
    assert sorted(keys) == sorted(Config.model_fields)

