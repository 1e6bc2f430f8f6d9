"""Diagram 6: each failure mode is recognised from its seed symptom, and only that one; healthy runs are quiet."""

from __future__ import annotations

import math

import pytest

from reverie.trainer.config import PRESETS, Config, build_config
from reverie.trainer.diagnostics import FAILURE_MODES, diagnose, solved_return, window
from reverie.runs import RunDir
from reverie.trainer.metrics import MetricsWriter


def rows_from(**columns: list) -> list[dict]:
    """Column lists -> metric rows (oldest first), as the loop logs them; None leaves a key out of a row."""
    n = max(len(v) for v in columns.values())
    rows = []
    for i in range(n):
        row = {"env_step": 250 * (i + 1)}
        row.update({k: v[i] for k, v in columns.items() if i < len(v) and v[i] is not None})
        rows.append(row)
    return rows


def names(rows: list[dict], solved_return: float | None = None) -> list[str]:
    return [mode.name for mode in diagnose(rows, solved_return)]


SYMPTOMS = {
    "world_model_not_learning": (rows_from(
        dynamics_loss=[5.0, 5.0, 5.0, 5.0], reward_mae=[2.0, 2.0, 2.0, 2.0],
        world_model_grad_norm=[1e-4, 1e-4, 1e-4, 1e-4]), None),
    "policy_exploits_model": (rows_from(
        mean_imagined_return=[10.0, 50.0, 100.0], eval_return=[10.0, 10.0, 10.0]), None),
    "gradient_explosion": (rows_from(
        actor_grad_norm=[0.5, 2.0, 50.0, float("nan")]), None),
    "critic_divergence": (rows_from(
        critic_loss=[1.0, 5.0, 20.0, 100.0], critic_value_mean=[10.0, 100.0, 1000.0],
        critic_td_error=[50.0, 500.0, 5000.0]), None),
    "policy_converges_too_fast": (rows_from(
        entropy=[1.5, 0.5, 0.01, 0.0], eval_return=[50.0, 100.0, 100.0, 100.0]), 475.0),
}


def test_every_failure_mode_has_a_symptom_case():
    assert set(SYMPTOMS) == {mode.name for mode in FAILURE_MODES}
    assert all(mode.remedies for mode in FAILURE_MODES)


@pytest.mark.parametrize("mode", sorted(SYMPTOMS))
def test_symptom_names_exactly_its_mode(mode):
    """The seed's symptom series fires its own detector and no other."""
    rows, solved = SYMPTOMS[mode]
    assert names(rows, solved) == [mode]


@pytest.mark.parametrize("mode", sorted(SYMPTOMS))
def test_two_rows_are_not_enough_to_diagnose(mode):
    """A trend needs at least three points; one noisy pair of rows must not raise an alarm."""
    rows, solved = SYMPTOMS[mode]
    clean = [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))} for r in rows[:2]]
    assert names(clean, solved) == []


def test_gradient_explosion_on_growth_alone_and_on_nan_loss_alone():
    """Tenfold actor-gradient growth fires without any NaN; so does a single NaN loss with flat gradients."""
    assert names(rows_from(actor_grad_norm=[0.5, 2.0, 50.0])) == ["gradient_explosion"]
    assert names(rows_from(actor_grad_norm=[0.5, 2.0, 4.0])) == []
    assert names(rows_from(actor_grad_norm=[0.5, 0.5, 0.5], critic_loss=[1.0, float("nan"), 1.0])) == [
        "gradient_explosion"]


def test_nan_loss_is_still_diagnosed_after_a_round_trip_through_metrics_jsonl(tmp_path):
    """The loop diagnoses a window read back from metrics.jsonl; a NaN loss logged earlier must still count."""
    rows = rows_from(actor_grad_norm=[0.5, 0.5, 0.5], actor_loss=[1.0, float("nan"), 1.0])
    writer = MetricsWriter(RunDir(tmp_path))
    for row in rows:
        writer.write(row)
    writer.close()
    assert names(RunDir(tmp_path).metrics()) == ["gradient_explosion"]


def test_policy_exploits_model_needs_flat_real_returns():
    """Imagined returns rising together with real ones is learning, not exploitation."""
    assert names(rows_from(mean_imagined_return=[10.0, 50.0, 100.0], eval_return=[10.0, 50.0, 100.0])) == []


def test_convergence_is_not_judged_without_a_solved_return():
    """Pendulum with the defaults: the tanh-Normal's entropy falls from 0.66 to -4 as the policy sharpens
    at -143, its optimum. Without a solved return that is indistinguishable from a premature collapse,
    so nothing fires; with one (the pendulum preset's -200, or --set solved_return) it is judged."""
    rows = rows_from(entropy=[0.66, -4.09, -6.29, -4.89, -4.29], eval_return=[-1118.0, -144.1, -142.6, -142.8, -143.0])
    assert names(rows, solved_return=None) == []
    assert names(rows, solved_return=-200.0) == []  # solved
    assert names(rows, solved_return=-100.0) == ["policy_converges_too_fast"]  # a stricter bar: stuck below it


def test_the_solved_return_is_the_configs_else_the_envs():
    assert solved_return(build_config(env_id="CartPole-v1")) == 475.0
    assert solved_return(build_config(env_id="Pendulum-v1")) is None
    assert solved_return(build_config(preset="pendulum")) == -200.0
    assert solved_return(build_config(env_id="CartPole-v1", solved_return=400.0)) == 400.0


def test_a_solved_run_is_not_exploiting_its_model():
    """Seen on CartPole: the critic catching up with a solved policy raised imagined returns under a flat 500."""
    rows = rows_from(mean_imagined_return=[20.0, 45.0, 90.0], eval_return=[500.0, 500.0, 500.0])
    assert names(rows, solved_return=475.0) == []
    assert names(rows, solved_return=None) == ["policy_exploits_model"]


def test_critic_divergence_needs_all_three_growing():
    """A rising value mean alone (a critic tracking better returns) is not divergence."""
    rows = rows_from(critic_loss=[1.0, 0.8, 0.6, 0.5], critic_value_mean=[10.0, 100.0, 1000.0, 2000.0],
                     critic_td_error=[5.0, 4.0, 3.0, 2.0])
    assert names(rows) == []


def healthy_rows() -> list[dict]:
    n = 8
    return rows_from(
        dynamics_loss=[1.0 * 0.85**i for i in range(n)],
        reward_mae=[0.5 * 0.9**i for i in range(n)],
        world_model_grad_norm=[0.6, 0.5, 0.55, 0.45, 0.5, 0.4, 0.45, 0.4],
        mean_imagined_return=[10.0 + 5 * i for i in range(n)],
        eval_return=[20.0, 35.0, 60.0, 90.0, 130.0, 180.0, 240.0, 300.0],
        actor_loss=[-1.0 - 0.1 * i for i in range(n)],
        actor_grad_norm=[0.5, 0.6, 0.4, 0.55, 0.5, 0.45, 0.6, 0.5],
        critic_loss=[1.0 * 0.9**i for i in range(n)],
        critic_value_mean=[5.0 + 2 * i for i in range(n)],
        critic_td_error=[3.0 * 0.9**i for i in range(n)],
        entropy=[0.69, 0.67, 0.64, 0.6, 0.57, 0.53, 0.5, 0.47],
    )


def test_healthy_run_raises_no_alarm():
    """Losses falling, eval rising, entropy easing down, gradients stable: diagnose() stays silent."""
    assert names(healthy_rows(), 475.0) == []


def test_solved_cartpole_is_not_premature_convergence():
    """Low entropy at a flat 500 is success, not collapse, once the env's solved return is known."""
    rows = rows_from(entropy=[0.6, 0.3, 0.05, 0.01, 0.005], eval_return=[200.0, 450.0, 500.0, 500.0, 500.0])
    assert "policy_converges_too_fast" not in names(rows, solved_return=475.0)
    # The threshold is what decides: below a bar it has not reached, the same rows are a collapse.
    assert "policy_converges_too_fast" in names(rows, solved_return=600.0)


def test_remedies_name_the_runs_own_values_and_never_what_is_on():
    """Remedies start from this run's values (actor_lr 3e-4 -> 1e-4, not the seed's 3e-5 -> 1e-5) and never
    advise a switch that is already on (target_critic, return_bounds, obs_norm, orthogonal_init are on by default)."""
    cfg = Config()
    lines = {mode.name: mode.set_lines(cfg) for mode in FAILURE_MODES}
    assert "--set actor_lr=0.0001" in lines["gradient_explosion"]
    assert "--set horizon=10" in lines["gradient_explosion"]
    assert "--set actor_gradient=reinforce" in lines["gradient_explosion"]
    assert "--set world_model_lr=0.01" in lines["world_model_not_learning"]
    assert "--set critic_lr=0.0001" in lines["critic_divergence"]
    assert "--set entropy_coef=0.0015" in lines["policy_converges_too_fast"]
    every = " ".join(line for group in lines.values() for line in group)
    for already_on in ("target_critic=true", "return_bounds=true", "obs_norm=true", "orthogonal_init=true"):
        assert already_on not in every
    off = Config(target_critic=False, obs_norm=False, adaptive_entropy=True, entropy_coef=0.01, actor_lr=3e-5)
    assert "--set target_critic=true" in FAILURE_MODES[3].set_lines(off)
    assert "--set obs_norm=true" in FAILURE_MODES[0].set_lines(off)
    assert "--set actor_lr=1e-05" in FAILURE_MODES[2].set_lines(off)
    assert not any("actor_gradient" in line for line in FAILURE_MODES[2].set_lines(Config(actor_gradient="reinforce")))
    assert not any("adaptive_entropy" in line or "entropy_coef" in line for line in FAILURE_MODES[4].set_lines(off))


def test_every_remedy_line_is_a_valid_override():
    """Each suggested line, pasted after `reverie train`, gives a valid config that differs from the run's."""
    cfg = Config()
    for mode in FAILURE_MODES:
        for line in mode.set_lines(cfg):
            item = line.removeprefix("--set ")
            changed = build_config(None, [item])
            key = item.partition("=")[0]
            assert getattr(changed, key) != getattr(cfg, key), line


def test_reverie_diagnose_prints_when_what_and_the_set_lines(tmp_path, capsys):
    """A run whose log shows critic divergence: the command names it, the env step, the evidence and the remedies."""
    from reverie.cli import main

    cfg = Config(critic_lr=3e-4)
    (tmp_path / "config.json").write_text(cfg.model_dump_json())
    writer = MetricsWriter(RunDir(tmp_path))
    for row in SYMPTOMS["critic_divergence"][0]:
        writer.write(row)
    writer.close()
    assert main(["diagnose", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "critic_divergence: fired at 2 rows, env steps 750 to 1,000" in out
    assert "critic_value_mean when it first fired: [10.0, 100.0, 1000.0]" in out
    assert "try: --set critic_lr=0.0001 --set target_critic_tau=0.01 --set critic_target_clip=100" in out
    assert "gradient_explosion" not in out


def test_reverie_diagnose_on_a_quiet_run(tmp_path, capsys):
    from reverie.cli import main

    (tmp_path / "config.json").write_text(Config().model_dump_json())
    writer = MetricsWriter(RunDir(tmp_path))
    for row in healthy_rows():
        writer.write(row)
    writer.close()
    assert main(["diagnose", str(tmp_path)]) == 0
    assert "no failure mode fired (8 logged rows" in capsys.readouterr().out


FAMILIES = {"vector defaults": Config(), "frames": Config(pixels=True),
            **{f"preset {name}": build_config(name) for name in PRESETS}}


def at_cadence(cfg: Config, columns: dict[str, list], lead: int = 3) -> list[dict]:
    """A log at `cfg`'s cadence: `lead` healthy evaluations, then one evaluation per symptom value.
    Each row between two evaluations carries values interpolated between theirs (metrics move
    between evaluations); eval_return is only on evaluation rows, as the loop logs it."""
    per_eval = max(1, cfg.eval_every // cfg.log_every)
    n = max(len(v) for v in columns.values())
    rows = []
    for e in range(lead + n):
        for j in range(per_eval):
            row = {"env_step": (e * per_eval + j + 1) * cfg.log_every}
            for key, values in columns.items():
                i = e - lead
                if i < 0 or i >= len(values) or values[i] is None:
                    continue
                before = values[i - 1] if i > 0 and values[i - 1] is not None else values[i]
                if key == "eval_return":
                    if j == per_eval - 1:
                        row[key] = values[i]
                else:
                    row[key] = before + (values[i] - before) * (j + 1) / per_eval
            rows.append(row)
    return rows


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", SYMPTOMS)
def test_every_detector_can_fire_in_every_config_family(family, mode):
    """The window spans evaluations, not rows: frames (ten rows per evaluation), the presets' cadences
    and the vector defaults all show each detector enough evaluations for its symptom to fire."""
    cfg = FAMILIES[family]
    columns, solved = SYMPTOMS[mode]
    rows = at_cadence(cfg, {k: [r.get(k) for r in columns] for k in {k for r in columns for k in r if k != "env_step"}})
    assert mode in names(window(rows, cfg.diagnostics_window), solved)


def test_the_window_starts_at_its_nth_last_evaluation():
    rows = [{"env_step": i, **({"eval_return": 1.0} if i % 10 == 9 else {})} for i in range(100)]
    assert [r["env_step"] for r in window(rows, 4)][0] == 69
    assert len(window(rows[:20], 4)) == 20  # fewer evaluations than the window: everything so far
    assert len(window([{"env_step": i} for i in range(200)], 4)) == 64  # and never more than 64 rows


def test_exploitation_needs_a_dynamics_loss_that_stays_low():
    rows = rows_from(mean_imagined_return=[10.0, 50.0, 100.0], eval_return=[10.0, 10.0, 10.0], dynamics_loss=[0.3, 0.3, 0.31])
    assert "policy_exploits_model" in names(rows)
    rows = rows_from(mean_imagined_return=[10.0, 50.0, 100.0], eval_return=[10.0, 10.0, 10.0], dynamics_loss=[0.3, 0.6, 1.2])
    assert "policy_exploits_model" not in names(rows)


def test_remedies_a_resume_cannot_take_are_given_as_a_new_run():
    advice = FAILURE_MODES[1].advice(Config())
    resumable, _, fresh = advice.partition("; ")
    assert "--set epsilon=0.1" in resumable and "--set total_steps=100000" in resumable  # "train longer"
    assert fresh.startswith("a new run only (--resume refuses them): reverie train --run-dir NEW_DIR")
    assert "--set hidden_dim=256" in fresh and "--set dynamics_ensemble=5" in fresh and "hidden_dim" not in resumable
    assert "adaptive_entropy" in FAILURE_MODES[4].advice(Config()).partition("; ")[2]
