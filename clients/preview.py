"""The planning-preview example: ask the service to imagine ahead and save the picture.

    python -m clients.preview --url http://127.0.0.1:8000 --horizon 15 --samples 8 --out preview.png
    python -m clients.preview --actions 0,1,1,0,1 --out plan.png     # judge a plan of your own

Without `--obs`, the rollout starts from a fresh reset of the served model's env. For a model that
sees frames the picture is a filmstrip of its imagined frames, and its animation is saved beside it
(`preview.gif`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from reverie import envs

from .rest import RestClient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--obs", default=None, help="comma-separated vector observation (default: an env reset)")
    parser.add_argument("--actions", default=None, help="a JSON list, or comma-separated ints, to evaluate instead of the policy")
    parser.add_argument("--horizon", type=int, default=None)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--token", default=os.environ.get("REVERIE_API_TOKEN"))
    parser.add_argument("--out", default="preview.png")
    args = parser.parse_args(argv)
    with RestClient(args.url, token=args.token) as client:
        client.wait_ready()
        if args.obs is not None:
            obs = [float(x) for x in args.obs.split(",")]
        else:
            manifest = client.model()["manifest"]
            obs, _ = envs.EnvSpec.of(manifest).make().reset(seed=args.seed)
        actions = None
        if args.actions is not None:
            actions = json.loads(args.actions) if args.actions.lstrip().startswith("[") else [int(a) for a in args.actions.split(",")]
        summary = client.imagine(obs, args.horizon, args.samples, seed=args.seed, actions=actions)
        picture = lambda fmt: client.preview(obs, args.horizon, args.samples, seed=args.seed, actions=actions, fmt=fmt)  # noqa: E731
        Path(args.out).write_bytes(picture("png"))
        saved = [args.out]
        if getattr(obs, "ndim", 1) == 3:  # frames: the filmstrip's animation too
            saved.append(str(Path(args.out).with_suffix(".gif")))
            Path(saved[-1]).write_bytes(picture("gif"))
    first = [float(t.lambda_return[0]) for t in summary.trajectories]
    print(f"model version {summary.model_version}: {len(first)} imagined trajectories of {summary.horizon} steps, "
          f"lambda-return {min(first):.2f} .. {max(first):.2f}; saved {' and '.join(saved)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
