"""The pictures of an imagined rollout that a person previewing a plan looks at.

Image models: a filmstrip of the decoder's frames (PNG), one row per sample and one column per
imagined state, the reward that led to each state and its value written under it; or the same
animated, one GIF frame per imagined step (all samples side by side). Vector models: the decoded
observation dimensions, the predicted rewards and continues, and the values with their
lambda-returns, one thin line per sample (PNG).
"""

from __future__ import annotations

import io

import numpy as np

from .runtime import Imagination, Runtime

SCALE = 2  # frames are drawn at twice their size
GAP = 4  # pixels between frames and around the strip
HEADER = 16  # the title line above the strip
CAPTION = 24  # two text lines under each frame: reward, value
GIF_MS = 250  # each imagined step's time on screen in the animation


def render(runtime: Runtime, imagination: Imagination, fmt: str = "png") -> bytes:
    """The preview in `fmt` ("png"; "gif" for image models only, checked by the caller)."""
    samples, steps = imagination.states.shape[:2]
    decoded = runtime.decode(imagination.states.reshape(samples * steps, -1))
    decoded = decoded.reshape(samples, steps, *decoded.shape[1:])
    title = f"{runtime.manifest.env_id} · model v{runtime.version} · horizon {imagination.horizon} · {samples} sample(s)"
    if decoded.ndim == 5:  # images [S, T, H, W, C]
        strip = filmstrip(decoded, imagination, title)
        buffer = io.BytesIO()
        if fmt == "gif":
            frames = [strip.crop(column_box(strip, decoded.shape[2:4], t)) for t in range(steps)]
            frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=GIF_MS, loop=0)
        else:
            strip.save(buffer, format="PNG")
        return buffer.getvalue()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # a Figure per call, no pyplot state: safe across threads

    fig = _curves(Figure, decoded, imagination)
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def cell_size(frame_hw: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of one frame with its caption and gap."""
    height, width = frame_hw
    return SCALE * width + GAP, SCALE * height + CAPTION + GAP


def column_box(strip, frame_hw: tuple[int, int], t: int) -> tuple[int, int, int, int]:
    """The strip's column of imagined state t (all samples), with the title: one animation frame."""
    width, _ = cell_size(frame_hw)
    return GAP + t * width - GAP // 2, 0, GAP + (t + 1) * width - GAP // 2, strip.height


def filmstrip(decoded: np.ndarray, imagination: Imagination, title: str):
    """decoded [S, T, H, W, C] frames -> a Pillow image: row s is sample s, column t state t, captioned
    with the reward predicted on the step into it ("start" for the first) and its value."""
    from PIL import Image, ImageDraw

    samples, steps, height, width = decoded.shape[:4]
    cell_w, cell_h = cell_size((height, width))
    strip = Image.new("RGB", (GAP + steps * cell_w, HEADER + GAP + samples * cell_h), "white")
    draw = ImageDraw.Draw(strip)
    draw.text((GAP, 2), title, fill="black")
    frames = np.clip(decoded, 0, 255).astype(np.uint8)
    for s in range(samples):
        for t in range(steps):
            x, y = GAP + t * cell_w, HEADER + GAP + s * cell_h
            frame = Image.fromarray(frames[s, t].squeeze(-1) if frames.shape[-1] == 1 else frames[s, t])
            strip.paste(frame.resize((SCALE * width, SCALE * height), Image.Resampling.NEAREST), (x, y))
            reward = "start" if t == 0 else f"r {imagination.rewards[s, t - 1]:.2f}"
            draw.text((x, y + SCALE * height + 1), reward, fill="black")
            draw.text((x, y + SCALE * height + 12), f"v {imagination.values[s, t]:.2f}", fill="dimgray")
    return strip


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
