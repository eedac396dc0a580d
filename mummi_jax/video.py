"""Evaluation videos: an episode's image modalities side by side, as an animated GIF.

Missing frames are zeroed by the environment, so they show as black tiles: the video shows
what the agent saw. Depth is scaled to [0, 255] per episode. Written atomically.
"""

from __future__ import annotations

import io
import os

import numpy as np

from mummi_jax.checkpoint import atomic_write
from mummi_jax.envs.tasks import IMAGE_MODALITIES


def episode_frames(episode: dict, modalities) -> np.ndarray:
    """`(T, S, S*M, 3)` uint8: the image modalities of `episode` tiled left to right."""
    tiles = []
    for m in modalities:
        if m not in IMAGE_MODALITIES or m not in episode:
            continue
        x = np.asarray(episode[m], np.float32)
        if x.shape[-1] == 1:  # depth: normalise over the episode, grey
            hi = float(np.max(x)) or 1.0
            x = np.repeat(x / hi * 255.0, 3, axis=-1)
        tiles.append(np.clip(x, 0, 255).astype(np.uint8))
    if not tiles:
        raise ValueError(f"no image modality among {list(modalities)}; nothing to film")
    return np.concatenate(tiles, axis=2)


def write_gif(path: str, frames: np.ndarray, fps: int = 20, scale: int = 2) -> None:
    """Writes `(T, H, W, 3)` uint8 frames to `path` (temp file + rename)."""
    from PIL import Image

    images = [
        Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST)
        for f in frames
    ]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=int(1000 / fps),
        loop=0,
    )
    atomic_write(path, buffer.getvalue())


def write_episode(logdir: str, name: str, episode: dict, modalities) -> str | None:
    """`<logdir>/videos/<name>.gif` of `episode`'s image modalities; returns its path, or None
    when the task has no image modality."""
    try:
        frames = episode_frames(episode, modalities)
    except ValueError:
        return None
    path = os.path.join(logdir, "videos", f"{name}.gif")
    write_gif(path, frames)
    return path
