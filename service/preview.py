"""The picture of an imagined rollout that a person previewing a plan looks at (PNG).

Vector models: the decoded observation dimensions, the predicted rewards and continues, and the
values with their lambda-returns, one thin line per sample. Image models: the decoded frames.
"""

from __future__ import annotations

import io

import numpy as np

from .runtime import Imagination, Runtime

MAX_FRAME_ROWS = 4  # samples shown as frame strips
MAX_FRAME_COLS = 16  # steps shown per strip


def render(runtime: Runtime, imagination: Imagination) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # a Figure per call, no pyplot state: safe across threads

    samples, steps = imagination.states.shape[:2]
    decoded = runtime.decode(imagination.states.reshape(samples * steps, -1))
    decoded = decoded.reshape(samples, steps, *decoded.shape[1:])
    title = f"{runtime.manifest.env_id} · model v{runtime.version} · horizon {imagination.horizon} · {samples} sample(s)"
    if decoded.ndim == 5:  # images [S, T, H, W, C]
        fig = _frames(Figure, decoded)
    else:
        fig = _curves(Figure, decoded, imagination)
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def _frames(Figure, decoded: np.ndarray):
    rows, cols = min(len(decoded), MAX_FRAME_ROWS), min(decoded.shape[1], MAX_FRAME_COLS)
    fig = Figure(figsize=(1.2 * cols, 1.3 * rows + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for r in range(rows):
        for c in range(cols):
            axes[r, c].imshow(np.clip(decoded[r, c], 0, 255).astype(np.uint8))
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(f"t={c}", fontsize=8)
    return fig


def _curves(Figure, decoded: np.ndarray, imagination: Imagination):
    dims = decoded.shape[-1]
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    obs_ax, reward_ax, value_ax = fig.subplots(1, 3)
    t_states = np.arange(decoded.shape[1])
    t_steps = np.arange(1, imagination.horizon + 1)
    alpha = max(0.15, 1.0 / len(decoded))
    colors = [f"C{d % 10}" for d in range(dims)]
    for sample in range(len(decoded)):
        for d in range(dims):
            obs_ax.plot(t_states, decoded[sample, :, d], color=colors[d], alpha=alpha,
                        label=f"obs[{d}]" if sample == 0 else None)
        reward_ax.plot(t_steps, imagination.rewards[sample], color="C0", alpha=alpha, label="reward" if sample == 0 else None)
        reward_ax.plot(t_steps, imagination.continues[sample], color="C3", alpha=alpha, ls="--",
                       label="continue" if sample == 0 else None)
        value_ax.plot(t_states, imagination.values[sample], color="C2", alpha=alpha, label="value" if sample == 0 else None)
        value_ax.plot(t_states[:-1], imagination.lambda_return[sample], color="C1", alpha=alpha,
                      label="lambda-return" if sample == 0 else None)
    for ax, name in ((obs_ax, "decoded observation"), (reward_ax, "reward, continue"), (value_ax, "value, lambda-return")):
        ax.set_title(name)
        ax.set_xlabel("imagined step")
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    return fig
