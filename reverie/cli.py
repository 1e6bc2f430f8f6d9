"""The `reverie` command: train, export, serve, up, eval. Spellings are a contract (DESIGN.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path


def _sigterm_as_interrupt(*_):
    raise KeyboardInterrupt


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.config import build_config
    from trainer.loop import Trainer

    cfg = build_config(args.preset, args.set, env_id=args.env, seed=args.seed, total_steps=args.steps)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    trainer = Trainer(cfg, Path(args.run_dir), resume=args.resume, export=True)
    try:
        trainer.run()
    except KeyboardInterrupt:
        print(f"stopped at env step {trainer.env_step}; resume with --resume", file=sys.stderr)
        return 130
    print(f"done: env step {trainer.env_step}, last eval return {trainer.last_eval}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.export import export_run

    print(export_run(Path(args.run_dir)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reverie", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run the phased learning loop")
    train.add_argument("--env", default=None, help="gymnasium env id (default CartPole-v1)")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--steps", type=int, default=None, help="total env steps")
    train.add_argument("--run-dir", default="runs/default")
    train.add_argument("--preset", default=None, help="named overrides: cartpole, pendulum, smoke")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --run-dir")
    train.set_defaults(func=cmd_train)

    export = sub.add_parser("export", help="publish a new ONNX bundle version from the newest checkpoint")
    export.add_argument("--run-dir", required=True)
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"reverie {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
