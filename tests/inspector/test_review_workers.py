"""The scoring threads of a recipe review (`inspector._review_workers`): the rule for how many, and that
they run at once, hand results back in order, pass errors on at their place and stop when closed.

The review itself on these threads (parity with one image at a time, a corrupt file, cancel and
resume) is tested in ``test_review.py``.
"""

from __future__ import annotations

import threading

import pytest
import torch

from inspector._review_workers import MAX_REVIEW_WORKERS, WorkerPlan, plan_workers, score_concurrently

WAIT_S = 30.0   # a generous bound for a thread to reach a barrier; a correct run waits milliseconds


def test_plan_gives_one_thread_per_torch_thread_on_the_cpu() -> None:
    budget = torch.get_num_threads()
    plan = plan_workers(None, device="cpu", runtime="torch", images=1000)
    assert plan.workers == min(budget, MAX_REVIEW_WORKERS)
    assert plan.workers * max(plan.threads, 1) <= max(budget, 1), "no more torch threads than the budget"
    assert plan.threads == (max(1, budget // plan.workers) if plan.workers > 1 else 0)
    assert plan_workers(None, device="cpu", runtime="torch", images=1).workers == 1, "no more threads than images"


@pytest.mark.parametrize(("device", "runtime"), [("cuda:0", "torch"), ("cuda", "torch"), ("cpu", "onnx")])
def test_plan_gives_one_thread_where_the_model_batches(device: str, runtime: str) -> None:
    plan = plan_workers(None, device=device, runtime=runtime, images=100)
    assert (plan.workers, plan.threads) == (1, 0)
    assert "one scoring thread" in plan.reason


def test_plan_keeps_what_was_asked_and_refuses_zero() -> None:
    plan = plan_workers(3, device="cuda:0", runtime="torch", images=100)
    assert plan.workers == 3 and plan.threads == max(1, torch.get_num_threads() // 3)
    assert plan_workers(3, device="cpu", runtime="torch", images=2).workers == 2
    with pytest.raises(ValueError, match="review workers must be >= 1, got 0"):
        plan_workers(0, device="cpu", runtime="torch", images=10)


def test_items_are_scored_at_once_and_come_back_in_order() -> None:
    """Item 0 cannot finish before item 1 has started (a barrier of 2): with one thread at a time this
    would time out. Later items finish first, and the results still come back in the items' order."""
    meet = threading.Barrier(2, timeout=WAIT_S)
    first_done = threading.Event()
    names: set[str] = set()

    def score(item: int) -> int:
        names.add(threading.current_thread().name)
        if item in (0, 1):
            meet.wait()               # both are being scored at the same time
        if item == 0:
            first_done.wait(WAIT_S)   # ... and 0 finishes after 2, 3 and 4
        if item == 4:
            first_done.set()
        return item * 10

    out = list(score_concurrently(range(6), score, plan=WorkerPlan(3, 1, "test")))
    assert out == [0, 10, 20, 30, 40, 50]
    assert all(name.startswith("review-score") for name in names)


def test_an_error_is_raised_at_its_place_and_the_threads_end() -> None:
    def score(item: int) -> int:
        if item == 2:
            msg = "item 2 is bad"
            raise KeyError(msg)
        return item

    got: list[int] = []
    with pytest.raises(KeyError, match="item 2 is bad"):
        for value in score_concurrently(range(8), score, plan=WorkerPlan(2, 0, "test")):
            got.append(value)
    assert got == [0, 1], "the results before the bad item are handed back first"
    assert not [t for t in threading.enumerate() if t.name.startswith("review-score")]


def test_closing_waits_for_the_items_in_flight_and_drops_the_rest() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def score(item: int) -> int:
        with lock:
            started.append(item)
        return item

    results = score_concurrently(range(1000), score, plan=WorkerPlan(2, 1, "test"))
    assert next(results) == 0
    results.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("review-score")], "threads left running"
    assert len(started) <= 2 * 2 + 1, f"{len(started)} items were started for one result taken"


def test_torch_threads_of_the_caller_are_left_as_they_were() -> None:
    before = torch.get_num_threads()
    seen: list[int] = []

    def score(item: int) -> int:
        seen.append(torch.get_num_threads())
        return item

    assert list(score_concurrently(range(4), score, plan=WorkerPlan(2, 1, "test"))) == [0, 1, 2, 3]
    assert set(seen) == {1}, "each scoring thread runs with its own torch thread count"
    assert torch.get_num_threads() == before
