"""The fit's views: every good frame and its rotations through the backbone, in batches of one frame size.

``PatchKNN.fit`` and ``add_normal`` hand each view's features to a sink that adds them to the bank; the
batching (frames of one size together, at most ``batch_size`` views per backbone call) and the
progress count (one step per frame, once all its views are in) live here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from models.preprocess import FrameGeometry, check_image, rotate_frame

__all__ = ["extract_views"]


def extract_views(
    images: Iterable[Any],
    angles: tuple[float, ...],
    features: Callable[[list[np.ndarray]], tuple[torch.Tensor, FrameGeometry]],
    sink: Callable[[int, torch.Tensor, float, FrameGeometry], None],
    *,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
    total: int,
) -> None:
    """Run every frame (and its rotations by ``angles``) through ``features`` in batches of one size.

    Args:
        images: the frames, each checked (``check_image``; the error names its index).
        angles: the rotations of each frame, in degrees (0.0 is the frame itself).
        features: same-sized (H, W, 3) uint8 frames -> ((B, h, w, D) raw features, geometry).
        sink: receives ``(owner, raw (h, w, D), angle, geometry)`` for each view; owner = the frame's index.
        batch_size: at most this many views per ``features`` call.
        progress: called as ``progress(done, total)`` once all views of a frame have been sunk.
        total: the ``total`` that ``progress`` is given.
    """
    pending: list[tuple[int, float, np.ndarray]] = []
    done = 0

    def flush() -> None:
        nonlocal done
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            raw, geo = features([view for _, _, view in chunk])
            for (owner, angle, _), feats in zip(chunk, raw, strict=True):
                sink(owner, feats, angle, geo)
        finished = {owner for owner, _, _ in pending}
        pending.clear()
        for _ in finished:
            done += 1
            if progress is not None:
                progress(done, total)

    for i, image in enumerate(images):
        frame = check_image(image, i)
        if pending and pending[-1][2].shape != frame.shape:
            flush()
        pending.extend((i, angle, rotate_frame(frame, angle)) for angle in angles)
        if len(pending) >= batch_size:
            flush()
    flush()
