"""The `reverie` command: train, config, export, serve, up, eval, teach, diagnose."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from reverie.bundle import BundleError
from reverie.experience import LogError
from reverie.objectstore import StoreError, is_store_url
from reverie.runs import RunDir
from reverie.signals import on_stop_signals

SOURCES = ("env", "clients", "both")
EXPERIENCE_HELP = ("take clients' experience (POST /experience, outcome reports) into LOG: a folder of segment files, "
                   "or redis://HOST:PORT[/DB][?stream=NAME], a stream several servers share")
SPACES_HELP = ("a JSON file of the world's observation_space and action_space (and optionally name), in the "
               "bundle manifest's form: no gymnasium env; learns from the clients and is evaluated by their evaluation sessions")
PUBLISH_HELP = ("also upload every exported version to S3-compatible object storage, where `reverie serve --models "
                "s3://...` replicas on other hosts follow it (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
SOURCE_HELP = ("what the trainer learns from: its own env (default), the served clients' experience (the env only "
               "evaluates and gives the spaces), or both")


def _spaces(args: argparse.Namespace):
    """The world's spaces from `--spaces FILE` (checked, every wrong field named), or None."""
    from reverie.bundle import load_spaces

    return load_spaces(args.spaces) if args.spaces else None


def cmd_train(args: argparse.Namespace) -> int:
    from reverie.trainer import distributed
    from reverie.trainer.config import resolve_config

    cfg, sources = resolve_config(args.preset, args.set, env_id=args.env, seed=args.seed, total_steps=args.steps,
                                  source=args.source, spaces=_spaces(args))
    given = frozenset(key for key, source in sources.items() if source != "default")
    ranks = distributed.from_environment()  # a torchrun launch: this process is one rank
    if args.nproc > 1 or ranks is not None:
        if cfg.source != "env":
            raise ValueError(f"--nproc: data-parallel training learns from the trainer's own env; source={cfg.source} "
                             "is served clients' experience, which one process reads")
    job = (cfg, Path(args.run_dir), args.resume, given, args.publish)
    if args.nproc < 2 or ranks is not None:
        return _train_rank(ranks, *job)
    from reverie.trainer.resume import reconcile

    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

    reconcile(RunDir(Path(args.run_dir)), cfg, args.resume, given)  # a wrong run directory exits 2 before any rank starts
    processes = distributed.spawn(args.nproc, _train_rank, *job)
    stopped = threading.Event()
    on_stop_signals(lambda: (stopped.set(), [os.kill(pid, signal.SIGTERM) for pid in processes.pids()]))
    try:
        while not processes.join():
            pass
    except (ProcessRaisedException, ProcessExitedException) as err:  # the other ranks are stopped by then
        print(f"reverie train: a rank failed:\n{err}", file=sys.stderr)
        return 1
    return 130 if stopped.is_set() else 0


def _train_rank(ranks, cfg, run_dir: Path, resume: bool, given: frozenset[str], publish: str | None) -> int:
    """One training process: the only one, or one rank of a data-parallel run (rank 0 reports)."""
    from reverie.trainer.loop import Trainer

    if ranks is not None and not logging.getLogger().handlers:  # a spawned rank starts a fresh interpreter
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s rank {ranks.rank} %(name)s: %(message)s")
    stop = threading.Event()
    on_stop_signals(stop.set)
    trainer = Trainer(cfg, run_dir, resume=resume, export=True, stop=stop, given=given, publish=publish, ranks=ranks)
    trainer.run()
    if ranks is not None and not ranks.main:
        return 0
    if trainer.stopped:
        print(f"stopped at env step {trainer.env_step}; resume with --resume", file=sys.stderr)
        return 130
    print(f"done: env step {trainer.env_step}, last eval return {trainer.last_eval}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """The resolved configuration: each key's value, where it came from, what it does, and the seed's value."""
    import json

    from reverie.trainer.config import BLOCKS, Config, resolve_config, seed_deviations

    cfg, sources = resolve_config(args.preset, args.set, env_id=args.env, seed=args.seed, total_steps=args.steps,
                                  spaces=_spaces(args))
    values, seed = cfg.model_dump(mode="json"), seed_deviations()
    rows = {key: {"block": block, "value": values[key], "source": sources[key],
                  "description": Config.model_fields[key].description or "", **({"seed": seed[key][0]} if key in seed else {})}
            for block, keys in BLOCKS.items() for key in keys}
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(map(len, rows))
    for block, keys in BLOCKS.items():
        print(f"\n[{block}]")
        for key in keys:
            row, value = rows[key], json.dumps(rows[key]["value"])
            note = f"  [seed: {json.dumps(row['seed'])}]" if "seed" in row and row["seed"] != row["value"] else ""
            print(f"{key:<{width}}  {value:<14} {row['source']:<16} {row['description']}{note}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """The failure modes of a finished or running run: when they fired, the evidence, what to try."""
    from reverie.trainer.config import Config
    from reverie.trainer.diagnostics import findings, solved_return

    run_dir = Path(args.run_dir)
    cfg = Config.model_validate(RunDir(run_dir).config())
    rows = RunDir(run_dir).metrics()
    found = findings(rows, cfg.diagnostics_window, solved_return(cfg))
    span = f"{len(rows)} logged rows, env steps {rows[0]['env_step']:,}-{rows[-1]['env_step']:,}" if rows else "no logged rows"
    if not found:
        print(f"{run_dir}: no failure mode fired ({span})")
        return 0
    print(f"{run_dir}: {len(found)} failure mode(s) in {span}")
    for f in found:
        print(f"\n{f.mode.name}: fired at {len(f.steps)} rows, env steps {f.steps[0]:,} to {f.steps[-1]:,}")
        for key, series in f.first_evidence.items():
            print(f"  {key} when it first fired: {series}")
        print(f"  try: {f.mode.advice(cfg)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from reverie.trainer.export import export_run

    print(export_run(Path(args.run_dir)))
    return 0


def _settings(args: argparse.Namespace, models: Path | str):
    """The service's settings: the flags given, then the REVERIE_* variables, then the defaults (`reverie up`
    follows BEST by default, `reverie serve` the newest export)."""
    import os

    from reverie.service.settings import ENV_PREFIX, ServiceSettings

    given = {name: value for name, value in vars(args).items() if name in ServiceSettings.model_fields and name != "models"}
    if "follow" not in given and f"{ENV_PREFIX}FOLLOW" not in os.environ:
        given["follow"] = args.default_follow
    return ServiceSettings(models=models, **given)


def cmd_serve(args: argparse.Namespace) -> int:
    from reverie.service.server import Service

    models = args.models if is_store_url(args.models) else Path(args.models)
    if isinstance(models, Path) and not models.exists():
        raise FileNotFoundError(f"--models {models} does not exist (a run dir, its export folder, a bundle, or s3://BUCKET/PREFIX)")
    service = Service(_settings(args, models))
    on_stop_signals(service.stop)
    service.run()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .up import up

    train_args = (["--env", args.env] if args.env else []) + (["--preset", args.preset] if args.preset else [])
    train_args += ["--source", args.source] if args.source else []
    train_args += ["--publish", args.publish] if args.publish else []
    train_args += [arg for item in args.set for arg in ("--set", item)]
    if args.spaces:
        _spaces(args)  # a bad file stops here, before the server or the trainer starts
        train_args += ["--spaces", str(Path(args.spaces).resolve())]
    run_dir = Path(args.run_dir)
    # Clients that teach: the server logs their experience where the trainer tails it.
    if args.experience is not None:
        train_args += ["--set", f"experience={args.experience}"]
    elif args.source in ("clients", "both") or args.spaces:
        args.experience = str(RunDir(run_dir).experience)
    return up(run_dir, train_args, _settings(args, run_dir))


def cmd_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import numpy as np

    from reverie.bundle import latest_bundle
    from reverie.envs import EnvSpec
    from reverie.evaluation import evaluate_policy
    from reverie.history import Recent
    from reverie.service.runtime import Runtime

    bundle = latest_bundle(Path(args.bundle))
    if bundle is None:
        raise FileNotFoundError(f"no bundle under {args.bundle}")
    runtime = Runtime.load(bundle)
    manifest = runtime.manifest
    if manifest.world == "client" and not args.env:
        raise ValueError(f"{bundle} learned {manifest.env_id!r}, a world that lives at its clients: reverie eval plays a "
                         "gymnasium env (give --env ID of one with the same spaces); otherwise evaluate it with "
                         'evaluation sessions ("evaluate": true), whose returns the trainer logs as eval_return')
    spec = EnvSpec.of(manifest)
    spec = replace(spec, env_id=args.env or spec.env_id)
    episodes = args.episodes or manifest.eval_episodes
    seed = manifest.seed if args.seed is None else args.seed

    recent = Recent(runtime.history_length)  # the episode's last steps, for an agent with memory

    def act(obs):
        obs = np.asarray(obs, np.float32)
        result = runtime.act(obs[None], deterministic=True, seed=None,
                             history=runtime.history(recent.observations, recent.actions))
        recent.record(obs, result.agent_actions[0])
        return result.actions[0] if runtime.discrete else np.asarray(result.actions[0], np.float32)

    returns = evaluate_policy(act, spec, episodes, seed, start=recent.clear)
    print(f"{spec.env_id}: model version {runtime.version} (env step {manifest.training_step}), "
          f"{episodes} episodes, mean return {np.mean(returns):.2f} (min {np.min(returns):.1f}, max {np.max(returns):.1f})")
    return 0


def cmd_teach(args: argparse.Namespace) -> int:
    """The game loop teaching as a robot would: acting here with the newest bundle's graphs, uploading."""
    from reverie.clients.game_loop import main as game_loop
    from reverie.service.runtime import Runtime

    return game_loop(["--teach", "--local", args.export, *args.flags], load=Runtime.load)


def _server_flags(parser: argparse.ArgumentParser, follow: str = "latest") -> None:
    """A flag for every service setting but the models (the command's own) and the tokens (variables
    only); a flag left out leaves the setting to its REVERIE_* variable or its default."""
    from reverie.service.settings import ENV_PREFIX, SECRETS, ServiceSettings

    parser.set_defaults(default_follow=follow)
    special = {
        "follow": dict(choices=("latest", "best"), help="serve the newest export, or BEST: a newer version only once its "
                       "evaluation is within the run's promotion_tolerance of the best so far (default: %s)" % follow),
        "cors_origins": dict(action="append", metavar="ORIGIN", flag="--cors-origin",
                             help="let pages from ORIGIN (scheme://host[:port], or * for any) call the REST API; repeatable; "
                                  "default: none (no CORS headers)"),
    }
    for name, field in ServiceSettings.model_fields.items():
        if name in ("models", "experience", *SECRETS):
            continue
        options = dict(special.get(name, {}))
        flag = options.pop("flag", "--" + name.replace("_", "-"))
        if "action" not in options and "choices" not in options:
            options["type"] = field.annotation if field.annotation in (int, float, str) else str
        if "help" not in options:
            options["help"] = f"{field.description or name} (default: {field.default})"
        options["help"] += f"; env {ENV_PREFIX}{name.upper()}"
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reverie", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run the phased learning loop")
    train.add_argument("--env", default=None, help="gymnasium env id (default CartPole-v1)")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--steps", type=int, default=None, help="total env steps")
    train.add_argument("--run-dir", default="runs/default")
    train.add_argument("--preset", default=None, help="named overrides: cartpole, pendulum, smoke, seed_values (the seed's stated numbers)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --run-dir")
    train.add_argument("--source", choices=SOURCES, default=None, help=SOURCE_HELP)
    train.add_argument("--spaces", default=None, metavar="FILE", help=SPACES_HELP)
    train.add_argument("--publish", default=None, metavar="s3://BUCKET/PREFIX", help=PUBLISH_HELP)
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="data-parallel training in N processes on this host (one GPU each when there are GPUs, "
                            "else the gloo backend on the CPU); `torchrun ... -m reverie.cli train` launches the same")
    train.set_defaults(func=cmd_train)

    config = sub.add_parser("config", help="print the resolved configuration: values, sources, descriptions, the seed's values")
    config.add_argument("--env", default=None)
    config.add_argument("--seed", type=int, default=None)
    config.add_argument("--steps", type=int, default=None)
    config.add_argument("--preset", default=None, help="named overrides: cartpole, pendulum, smoke, seed_values")
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    config.add_argument("--spaces", default=None, metavar="FILE", help=SPACES_HELP)
    config.add_argument("--json", action="store_true", help="one JSON object, key -> value, source, description, seed")
    config.set_defaults(func=cmd_config)

    diag = sub.add_parser("diagnose", help="the failure modes a run showed, with evidence and --set lines to try")
    diag.add_argument("run_dir", metavar="RUN_DIR")
    diag.set_defaults(func=cmd_diagnose)

    export = sub.add_parser("export", help="publish a new ONNX bundle version from the newest checkpoint")
    export.add_argument("--run-dir", required=True)
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="serve the newest bundle over REST and gRPC, following new ones")
    serve.add_argument("--models", required=True, help="a run dir, its export folder, or one bundle; or s3://BUCKET/PREFIX "
                       "(endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
    serve.add_argument("--experience", default=None, metavar="LOG", help=EXPERIENCE_HELP + "; default: none")
    _server_flags(serve)
    serve.set_defaults(func=cmd_serve)

    up = sub.add_parser("up", help="the main job: train in the background and serve what it exports")
    up.add_argument("--run-dir", default="runs/default")
    up.add_argument("--env", default=None, help="gymnasium env id (default CartPole-v1)")
    up.add_argument("--preset", default=None, help="trainer preset (see reverie train)")
    up.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="trainer config override")
    up.add_argument("--source", choices=SOURCES, default=None,
                    help=SOURCE_HELP + "; with clients or both the server takes experience into RUN_DIR/experience")
    up.add_argument("--spaces", default=None, metavar="FILE", help=SPACES_HELP)
    up.add_argument("--publish", default=None, metavar="s3://BUCKET/PREFIX", help=PUBLISH_HELP)
    up.add_argument("--experience", default=None, metavar="LOG",
                    help=EXPERIENCE_HELP + ", for the server and the trainer; default: RUN_DIR/experience with --source clients|both")
    _server_flags(up, follow="best")  # the main job: a served agent that never gets worse
    up.set_defaults(func=cmd_up)

    evaluate = sub.add_parser("eval", help="play a bundle through onnxruntime in the real env")
    evaluate.add_argument("--bundle", required=True, help="a bundle, an export folder or a run dir (newest bundle)")
    evaluate.add_argument("--env", default=None, help="default: the bundle's env")
    evaluate.add_argument("--episodes", type=int, default=None, help="default: the trainer's eval episodes")
    evaluate.add_argument("--seed", type=int, default=None, help="default: the run's seed (the trainer's eval episodes)")
    evaluate.set_defaults(func=cmd_eval)

    teach = sub.add_parser("teach", help="play an env acting with the newest bundle's ONNX graphs here, and upload "
                                         "every step to a server (python -m clients.game_loop --help: the flags)")
    teach.add_argument("export", metavar="EXPORT_DIR", help="a run's export folder (the newest bundle is followed)")
    teach.add_argument("flags", nargs=argparse.REMAINDER, help="game loop flags: --url, --transport, --steps, --rate, ...")
    teach.set_defaults(func=cmd_teach)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, BundleError, LogError, StoreError) as err:
        print(f"reverie {args.command}: {err}", file=sys.stderr)
        return 2

