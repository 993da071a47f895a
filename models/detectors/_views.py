"""The fit's views: every good frame and its rotations through the backbone, in batches of one frame size.

``PatchKNN.fit`` and ``add_normal`` hand each view's features to a sink that adds them to the bank; the
batching (frames of one size together, at most ``batch_size`` views per backbone call) and the
progress count (one step per frame, once all its views are in) live here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
    known: Sequence[tuple[torch.Tensor, FrameGeometry]] = (),
    before: Callable[[list[torch.Tensor]], object] | None = None,
) -> None:
    """Run every frame (and its rotations by ``angles``) through ``features`` in batches of one size.

    Args:
        images: the frames, each checked (``check_image``; the error names its index).
        angles: the rotations of each frame, in degrees (0.0 is the frame itself).
        features: same-sized (H, W, 3) uint8 frames -> ((B, h, w, D) raw features, geometry).
        sink: receives ``(owner, raw (h, w, D), angle, geometry)`` for each view; owner = the frame's index,
            in the order the views would come without ``known``.
        batch_size: at most this many views per ``features`` call.
        progress: called as ``progress(done, total)`` once all views of a frame have been sunk.
        total: the ``total`` that ``progress`` is given.
        known: what ``features`` already gave for the first frames as they are (one (1, h, w, D) batch each, as
            the brightness probe keeps them): their unturned views are not extracted again.
        before: when given, every view is held until all are extracted; ``before`` gets their (h * w, D) rows
            (a statistic of all views that the sink needs: the fit's feature map), then each goes to ``sink``.
    """
    if before is not None:
        held: list[tuple[int, torch.Tensor, float, FrameGeometry]] = []
        extract_views(images, angles, features, lambda *view: held.append(view), batch_size=batch_size,
                      progress=progress, total=total, known=known)
        before([raw.reshape(-1, raw.shape[-1]) for _, raw, _, _ in held])
        for view in held:
            sink(*view)
        return
    pending: list[tuple[int, float, np.ndarray | None]] = []      # a known view has no pixels to extract
    done = 0
    shape: tuple[int, ...] = ()             # the pending frames' size

    def flush() -> None:
        nonlocal done
        extracted: dict[int, tuple[torch.Tensor, FrameGeometry]] = {}
        todo = [k for k, (_, _, view) in enumerate(pending) if view is not None]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            raw, geo = features([view for k in chunk if (view := pending[k][2]) is not None])
            extracted.update((k, (feats, geo)) for k, feats in zip(chunk, raw, strict=True))
        for k, (owner, angle, _) in enumerate(pending):
            feats, geo = extracted[k] if k in extracted else (known[owner][0][0], known[owner][1])
            sink(owner, feats, angle, geo)
        finished = {owner for owner, _, _ in pending}
        pending.clear()
        for _ in finished:
            done += 1
            if progress is not None:
                progress(done, total)

    for i, image in enumerate(images):
        frame = check_image(image, i)
        if pending and shape != frame.shape:
            flush()
        shape = frame.shape
        pending.extend((i, angle, None if angle == 0.0 and i < len(known) else rotate_frame(frame, angle))
                       for angle in angles)
        if len(pending) >= batch_size:
            flush()
    flush()
