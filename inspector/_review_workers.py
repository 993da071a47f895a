"""Scoring threads for a recipe review on the CPU: several images at once, each on its own thread.

On a CPU, batching a ViT does not pay (a 448x672 frame is already 1,536 tokens of matmuls), and
one image spread over all cores pays a synchronisation barrier at every operator, which a busy
machine makes long (on the loaded 2-core development machine one torch thread scored a review
faster than two). Scoring whole images concurrently, one torch thread each, has no such barriers:
torch releases the GIL inside its operators, and OpenCV (thumbnails, overlays, JPEG encoding) does
too, so the writing of one image's report files overlaps the scoring of the next. Measured
(benchmarks/speed_notes.md, issue 17): 1.9-2.1x one image at a time under load, 1.04x on a quiet
machine, where one image on all cores already runs the ViT at the CPU's matmul peak.

`plan_workers` holds the rule for how many threads; `score_concurrently` runs them and hands the
journal records back in the order of the files, whatever order the threads finish in.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, TypeVar

__all__ = ["MAX_REVIEW_WORKERS", "WorkerPlan", "plan_workers", "score_concurrently"]

logger = logging.getLogger(__name__)

# Most scoring threads a review starts by itself: each holds one frame's activations and kNN blocks
# (about 0.2-0.5 GB at 448x672; ours, from the block sizes in models.detectors._knn), so the cap
# bounds memory on many-core machines; beyond it each thread gets more torch threads instead.
MAX_REVIEW_WORKERS: Final = 8
# Images handed to the threads ahead of the one the journal waits for: enough that no thread idles
# while an earlier image finishes, few enough that a cancel waits for little work.
AHEAD_PER_WORKER: Final = 2

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class WorkerPlan:
    """How a review scores: ``workers`` images at once, each with ``threads`` torch threads."""

    workers: int        # scoring threads (1: the one-image-at-a-time or batched path)
    threads: int        # torch intra-op threads of each scoring thread (0: leave torch's setting alone)
    reason: str         # the rule that chose it, in words (logged, and in the report's notes)


def plan_workers(requested: int | None, *, device: str, runtime: str, images: int) -> WorkerPlan:
    """The rule for the number of scoring threads of a recipe review.

    Args:
        requested: what the caller asked for (``--workers``); None chooses by the rule below.
        device: the station's device (``cpu``, ``cuda:0``...).
        runtime: ``torch`` or ``onnx``: what scores.
        images: images left to score (no more threads than images).

    Returns:
        On the CPU with torch, the rule: the process's torch thread budget
        (``torch.get_num_threads()``: the physical cores unless ``OMP_NUM_THREADS`` or
        ``torch.set_num_threads`` says otherwise) split into one scoring thread per torch thread,
        at most `MAX_REVIEW_WORKERS`, each with ``budget // workers`` torch threads. Elsewhere one
        thread: on CUDA the detector reuses pinned buffers and CUDA graphs per call and batches
        instead, and onnxruntime has its own thread pool. An explicit ``requested`` is kept (its
        torch threads are ``budget // requested``, at least 1).
    """
    import torch

    budget = max(1, torch.get_num_threads())
    if requested is not None:
        if requested < 1:
            msg = f"review workers must be >= 1, got {requested}"
            raise ValueError(msg)
        workers = max(1, min(requested, images))
        return WorkerPlan(workers, max(1, budget // workers) if workers > 1 else 0,
                          f"{requested} scoring thread(s) as asked")
    if not device.startswith("cpu") or runtime != "torch":
        return WorkerPlan(1, 0, f"one scoring thread ({runtime} on {device} batches instead)")
    workers = max(1, min(budget, MAX_REVIEW_WORKERS, images))
    threads = max(1, budget // workers) if workers > 1 else 0
    return WorkerPlan(workers, threads, f"{workers} scoring thread(s) x {max(threads, 1)} torch thread(s) "
                      f"each: one per torch thread of the CPU budget ({budget}), at most "
                      f"{MAX_REVIEW_WORKERS}")


def score_concurrently(items: Iterable[T], score: Callable[[T], R], *, plan: WorkerPlan) -> Generator[R, None, None]:
    """``score(item)`` for every item on ``plan.workers`` threads; the results in the items' order.

    At most ``plan.workers * AHEAD_PER_WORKER`` items are in flight. Closing the iterator (a
    cancelled review) drops the items not started and waits for the ones being scored (at most
    one per thread), so no thread outlives it. An exception of ``score`` is raised here, at its
    item's place in the order.
    """
    def start_thread() -> None:
        if plan.threads > 0:
            import torch

            # ATen's thread count is kept per thread (an OpenMP setting): this sets the scoring
            # thread's own, not the caller's.
            torch.set_num_threads(plan.threads)

    import torch

    caller_threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(max_workers=plan.workers, thread_name_prefix="review-score",
                              initializer=start_thread)
    pending: collections.deque[Future[R]] = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(score, item))
            if len(pending) >= plan.workers * AHEAD_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if plan.threads > 0:
            # set_num_threads also sets the default that threads started later begin with: give it back
            torch.set_num_threads(caller_threads)
