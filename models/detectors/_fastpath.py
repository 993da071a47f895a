"""The fixed-shape fast path of ``PatchKNN.predict`` on CUDA: pinned host buffers, asynchronous
copies, reduced-precision backbone, and one CUDA graph per (batch, height, width).

A production line runs one recipe at one frame size, so after the first frame every call has the
same shapes. On a GPU the batch-1 cost of the eager ViT-S is mostly kernel launches (~150 per
frame, each a few microseconds of Python and driver time); replaying a captured CUDA graph issues
them all at once. The captured function must not synchronise with the host (no ``.item()``, no
boolean indexing, no host-to-device copy of a new tensor), which is why ``PatchKNN`` scores every
patch (no boolean mask) on this path and keeps its normalisation constants on the device.

* ``PinnedStaging``: page-locked host buffers per shape; the uint8 frames are uploaded with
  ``non_blocking=True`` and the results copied back the same way, with one stream synchronisation
  per batch. On the CPU it hands the arrays through unchanged.
* ``GraphCache``: captures ``fn(frames)`` once per input shape and replays it; an entry is
  captured again when a tensor it reads (the memory bank) has been replaced.
* ``autocast_dtype``: the dtype of the backbone's matmuls for a ``precision`` setting.

Everything here is an optimisation of the same computation: ``PatchKNN`` runs the same function
eagerly where CUDA graphs are off or not possible (CPU, masking, a search radius).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch

__all__ = ["GraphCache", "PinnedStaging", "autocast_dtype"]

logger = logging.getLogger(__name__)

# Eager runs on a side stream before capture: cuDNN/cuBLAS pick their algorithms and the caching
# allocator sizes its blocks, so the capture records the steady state (PyTorch's CUDA graph recipe).
WARMUP_RUNS: Final = 3
# Distinct input shapes kept captured (a recipe has one; review folders may have a few sizes).
MAX_GRAPHS: Final = 4
MAX_BUFFERS: Final = 16

PRECISIONS: Final = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the backbone for ``precision`` on ``device``; None runs it in float32.

    ``"auto"`` is float16 on CUDA (tensor cores; DINOv2 ViT-S activations stay far inside its
    range) and float32 on the CPU (bfloat16 matmuls are only fast with AMX/AVX512-BF16).
    """
    if precision not in PRECISIONS:
        msg = f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        raise ValueError(msg)
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class PinnedStaging:
    """Page-locked host buffers for the upload of frames and the download of results (CUDA only).

    A buffer is reused by the next call of the same shape, so ``download`` synchronises before it
    returns copies; ``upload`` must not be called again before the previous batch was downloaded
    (``PatchKNN.predict`` alternates them).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def _buffer(self, role: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        key = (role, shape, dtype)
        if key not in self._buffers:
            if len(self._buffers) >= MAX_BUFFERS:
                self._buffers.clear()
            self._buffers[key] = torch.empty(shape, dtype=dtype, pin_memory=True)
        return self._buffers[key]

    def upload(self, frames: np.ndarray, device: torch.device) -> torch.Tensor:
        """(B, H, W, 3) uint8 host frames -> the same on ``device`` (asynchronous on CUDA)."""
        if device.type != "cuda":
            return torch.from_numpy(np.ascontiguousarray(frames))
        host = self._buffer("in", tuple(frames.shape), torch.uint8)
        host.numpy()[...] = frames
        return host.to(device, non_blocking=True)

    def download(self, *tensors: torch.Tensor) -> list[np.ndarray]:
        """Device tensors -> float32 host arrays (one synchronisation for all of them)."""
        if not tensors or tensors[0].device.type != "cuda":
            return [t.detach().float().numpy().copy() for t in tensors]
        hosts = []
        for i, t in enumerate(tensors):
            host = self._buffer(f"out{i}", tuple(t.shape), torch.float32)
            host.copy_(t, non_blocking=True)
            hosts.append(host)
        torch.cuda.current_stream(tensors[0].device).synchronize()
        return [h.numpy().copy() for h in hosts]

    def clear(self) -> None:
        self._buffers.clear()


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor               # the static input the graph reads
    outputs: tuple[torch.Tensor, ...]  # the static outputs it writes (overwritten by the next replay)
    reads: tuple[torch.Tensor, ...]    # tensors it reads from outside (kept alive: their memory must not move)


class GraphCache:
    """One CUDA graph of ``fn`` per input shape.

    ``run(fn, frames, reads=(bank,))`` captures ``fn(frames)`` on the first call with that shape
    (after ``WARMUP_RUNS`` eager runs on a side stream) and replays it afterwards. ``reads`` are
    the tensors ``fn`` reads besides its input; when one of them is no longer the same object
    (a refitted bank), the shape is captured again. The outputs are static tensors, valid until
    the next ``run``.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[tuple[int, ...], torch.dtype, str], _Captured] = {}

    def run(
        self,
        fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
        frames: torch.Tensor,
        *,
        reads: tuple[torch.Tensor, ...] = (),
    ) -> tuple[torch.Tensor, ...]:
        if frames.device.type != "cuda":
            msg = "CUDA graphs need a CUDA device; run the function eagerly on the CPU"
            raise RuntimeError(msg)
        key = (tuple(frames.shape), frames.dtype, str(frames.device))
        entry = self._entries.get(key)
        if entry is not None and (len(entry.reads) != len(reads)
                                  or any(a is not b for a, b in zip(entry.reads, reads, strict=True))):
            entry = None
        if entry is None:
            entry = self._capture(fn, frames, reads)
            if len(self._entries) >= MAX_GRAPHS:
                self._entries.clear()
            self._entries[key] = entry
        entry.inputs.copy_(frames, non_blocking=True)
        entry.graph.replay()
        return entry.outputs

    @staticmethod
    def _capture(
        fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], frames: torch.Tensor, reads: tuple[torch.Tensor, ...]
    ) -> _Captured:
        static = frames.clone()
        side = torch.cuda.Stream(device=frames.device)  # type: ignore[no-untyped-call]  # untyped in torch
        side.wait_stream(torch.cuda.current_stream(frames.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                fn(static)
        torch.cuda.current_stream(frames.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = fn(static)
        logger.info("patch_knn: captured a CUDA graph for input %s", tuple(frames.shape))
        return _Captured(graph=graph, inputs=static, outputs=tuple(outputs), reads=tuple(reads))

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
