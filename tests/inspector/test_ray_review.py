"""Batch review on a real local Ray cluster (2 CPUs, started once for the module).

The Ray run is checked against the single-process review of the same folder (journal records and
report), and for the failures it must survive: a worker killed mid-run, a run cancelled and resumed.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inspector.cli import EXIT_OK, main
from inspector.errors import InspectorError
from inspector.results import Progress
from inspector.review import JOURNAL_NAME, ReviewSummary, review
from inspector.teach import run_to_end
from tests.helpers.images import textured_part, with_defect, write_images

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]')")

from inspector.ray_review import ray_review  # noqa: E402  (needs ray, skipped above without it)

ACTOR_PREFIX = "inspector-review-"
CORRUPT = "broken.png"


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local Ray cluster for the module: 2 CPUs, a small object store, no dashboard.

    The workers get isolated user folders too (the autouse fixture's monkeypatch comes after this
    module-scoped one and would not reach the cluster's processes).
    """
    user = tmp_path_factory.mktemp("ray-user")
    env = {"INSPECTOR_DATA_DIR": str(user / "data"), "INSPECTOR_CACHE_DIR": str(user / "cache"),
           "HF_HOME": str(user / "hf"), "TORCH_HOME": str(user / "torch")}
    ray.init(num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 tiny parts (3 with a defect, 2 in a subfolder) and one unreadable file."""
    root = tmp_path_factory.mktemp("ray-review") / "lot"
    rng = np.random.default_rng(3)
    write_images(root, [textured_part(rng) for _ in range(7)], prefix="good")
    write_images(root, [with_defect(textured_part(rng), rng)[0] for _ in range(3)], prefix="defect")
    write_images(root / "line2", [textured_part(rng) for _ in range(2)])
    (root / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    return root


def _journal(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def _csv_files(out: Path) -> list[str]:
    with (out / "results.csv").open(encoding="utf-8", newline="") as fh:
        return [row["file"] for row in csv.DictReader(fh)]


def _assert_same_records(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["file"] == b["file"]
    assert a["status"] == b["status"], a["file"]
    if a["status"] != "ok":
        assert a["error"] == b["error"]
        return
    assert a["verdict"] == b["verdict"], a["file"]
    assert a["score"] == pytest.approx(b["score"], abs=1e-5), a["file"]
    assert (a["width"], a["height"], a["thumb"], a["overlay"]) == (b["width"], b["height"], b["thumb"], b["overlay"])
    assert len(a["regions"]) == len(b["regions"]), a["file"]
    for ra, rb in zip(a["regions"], b["regions"], strict=True):
        assert {k: ra[k] for k in ("x", "y", "width", "height", "area_px")} == \
               {k: rb[k] for k in ("x", "y", "width", "height", "area_px")}
        assert ra["max_score"] == pytest.approx(rb["max_score"], abs=1e-5)
        assert ra["mean_score"] == pytest.approx(rb["mean_score"], abs=1e-5)


def _our_actors() -> list[str]:
    return sorted(name for name in ray.util.list_named_actors() if name.startswith(ACTOR_PREFIX))


def _actors_left(timeout_s: float = 20.0) -> list[str]:
    """Our actors still alive once ``ray.kill`` (which is asynchronous) had ``timeout_s`` to act."""
    deadline = time.monotonic() + timeout_s
    while _our_actors() and time.monotonic() < deadline:
        time.sleep(0.2)
    return _our_actors()


def _finish(job: Generator[Progress, None, ReviewSummary]) -> ReviewSummary:
    return run_to_end(job)


# ------------------------------------------------------------------------------------------- tests


@pytest.mark.usefixtures("ray_cluster")
def test_ray_review_equals_the_single_process_review(folder: Path, taught_recipe: Path, tmp_path: Path) -> None:
    single = run_to_end(review(folder, tmp_path / "single", recipe=taught_recipe))
    on_ray = _finish(ray_review(folder, tmp_path / "ray", recipe=taught_recipe, workers=2, batch_size=2))

    header_1, records_1 = _journal(tmp_path / "single")
    header_2, records_2 = _journal(tmp_path / "ray")
    assert header_2 == header_1                                    # one journal format: either run continues the other
    by_file = {r["file"]: r for r in records_2}
    assert len(by_file) == len(records_2) == len(records_1) == 13  # each file once
    for record in records_1:
        _assert_same_records(by_file[record["file"]], record)
    assert _csv_files(tmp_path / "ray") == _csv_files(tmp_path / "single")   # same report order
    assert on_ray.counts == single.counts
    assert on_ray.counts["ERROR"] == 1 and on_ray.counts["PASS"] < 12        # the broken file; some defects found
    assert (on_ray.files, on_ray.thresholds, on_ray.rule) == (single.files, single.thresholds, single.rule)
    assert "Ray: 2 worker(s)" in on_ray.model
    assert sorted(p.name for p in (tmp_path / "ray" / "thumbs").iterdir()) == \
           sorted(p.name for p in (tmp_path / "single" / "thumbs").iterdir())
    assert _actors_left() == []                                    # the run's actors are gone
    assert sorted(p.name for p in (tmp_path / "ray").iterdir() if p.name.startswith(".")) == []  # index removed


@pytest.mark.usefixtures("ray_cluster")
def test_a_killed_worker_is_replaced_and_its_images_redone(
    folder: Path, taught_recipe: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="inspector.ray_review")
    job = ray_review(folder, tmp_path / "out", recipe=taught_recipe, workers=2, batch_size=2)
    killed = ""
    while True:
        try:
            tick = next(job)
        except StopIteration as stop:
            summary: ReviewSummary = stop.value
            break
        if not killed and tick.done > 0:
            killed = _our_actors()[0]
            ray.kill(ray.get_actor(killed))

    assert killed.endswith("-w0-g0")
    assert any("review worker 0 died" in r.getMessage() for r in caplog.records)
    _, records = _journal(tmp_path / "out")
    files = [r["file"] for r in records]
    assert len(files) == len(set(files)) == 13                     # every image once, none lost or doubled
    assert [r["file"] for r in records if r["status"] != "ok"] == [CORRUPT]
    assert sorted(_csv_files(tmp_path / "out")) == sorted(files)
    assert summary.counts["ERROR"] == 1 and sum(summary.counts.values()) == 13


@pytest.mark.usefixtures("ray_cluster")
def test_a_cancelled_ray_review_stops_its_workers_and_resumes(
    folder: Path, taught_recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    job = ray_review(folder, out, recipe=taught_recipe, workers=2, batch_size=2)
    for tick in job:
        if tick.done >= 4:
            break
    job.close()
    assert _actors_left() == []
    _, before = _journal(out)
    assert 4 <= len(before) < 13

    # resumed through the command line, on this process's cluster
    code = main(["review", str(folder), "--recipe", str(taught_recipe), "--out", str(out), "--ray", "--workers", "2"])
    assert code == EXIT_OK
    printed = capsys.readouterr().out
    assert f"resumed: {len(before)} file(s) were done by an earlier run" in printed
    assert "Ray: 2 worker(s) on 1 node(s)" in printed
    _, after = _journal(out)
    files = [r["file"] for r in after]
    assert len(files) == len(set(files)) == 13
    assert after[: len(before)] == before                          # nothing recorded was redone or lost
    assert sorted(_csv_files(out)) == sorted(files)


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"workers": 0}, "--workers must be 1 or more, got 0"),
    ({"workers": 3}, "--workers 3 asks for a CPU each, but the Ray cluster has 2; pass --workers 2"),
    ({"device": "cuda"}, "asks for cuda, but the Ray cluster has no GPU; pass --device cpu"),
])
def test_impossible_plans_are_refused_with_the_fix(
    folder: Path, taught_recipe: Path, tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    if ray.cluster_resources().get("GPU") and "device" in kwargs:
        pytest.skip("this machine's Ray cluster has a GPU")
    with pytest.raises(InspectorError, match=match.replace("(", r"\(")):
        run_to_end(ray_review(folder, tmp_path / "out", recipe=taught_recipe, **kwargs))
    assert not (tmp_path / "out" / JOURNAL_NAME).exists()


@pytest.mark.usefixtures("ray_cluster")
def test_a_model_that_cannot_load_is_reported_in_words(folder: Path, taught_recipe: Path, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(taught_recipe.parent / "models")
    with pytest.raises(InspectorError, match="tiny_part"):
        run_to_end(ray_review(folder, tmp_path / "out", recipe=taught_recipe, workers=1))
    assert _actors_left() == []


# ---- a million-image folder: the driver reads the folder and sends batches only as room frees ----


def test_the_walk_is_lazy_one_folder_at_a_time(tmp_path: Path) -> None:
    """A file added to a later folder after the walk began is still found: that folder was not read yet."""
    from inspector.capture import iter_image_files

    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "a.png").write_bytes(b"x")
    walk = iter_image_files(tmp_path)
    assert next(walk) == tmp_path / "day1" / "a.png"
    (tmp_path / "day2" / "b.png").write_bytes(b"x")
    assert list(walk) == [tmp_path / "day2" / "a.png", tmp_path / "day2" / "b.png"]


@pytest.mark.usefixtures("ray_cluster")
def test_the_pool_reads_batches_only_as_room_frees() -> None:
    from inspector.ray_review import WorkerPool

    class SlowEcho:       # defined here: Ray's workers get it by value (they cannot import this test module)
        """A trivial review actor: one tiny record per file after a short nap (no model)."""

        def score(self, rels: list[str]) -> list[dict[str, Any]]:
            time.sleep(0.02)
            return [{"file": rel, "status": "ok"} for rel in rels]

    pulled = 0

    def batches() -> Iterator[list[str]]:
        nonlocal pulled
        for i in range(60):
            pulled += 1
            yield [str(i)]

    remote = ray.remote(num_cpus=1)(SlowEcho)
    pool = WorkerPool(lambda name: remote.options(name=name).remote(), workers=2, in_flight_per_worker=2)
    done: list[str] = []
    most_read_ahead = 0
    try:
        for _rels, records in pool.results(batches()):
            assert not isinstance(records, str)
            done += [r["file"] for r in records]
            most_read_ahead = max(most_read_ahead, pulled - len(done))
    finally:
        pool.close()
    assert sorted(done, key=int) == [str(i) for i in range(60)]          # each batch once
    assert pool.capacity == 4 and most_read_ahead <= pool.capacity      # never more than the room in flight
