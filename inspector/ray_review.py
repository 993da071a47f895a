"""Batch review on a Ray cluster: the recipe review of `inspector.review`, its scoring spread over workers.

`ray_review` does what ``review(folder, out, recipe=...)`` does, with the images scored by Ray actors:
one per GPU of the cluster (else one per CPU slot, or ``workers`` of them), each holding the recipe's
`Station`, loaded once. The driver (the calling process):

- walks the folder lazily (`inspector.capture.iter_image_files`, the single-process order) and never
  holds the list of the whole tree;
- sends batches of relative paths, at most `IN_FLIGHT_PER_WORKER` batches per worker outstanding
  (``ray.wait``), so what it holds for the work in flight does not grow with the folder;
- appends every returned record to the same journal as a single-process review (``progress.jsonl``,
  same header line) and writes the same report, streamed from an on-disk index of the records. A Ray
  run continues an interrupted single-process review of the same folder and recipe, and the other way
  round.

The actors read the images and write thumbnails and overlays into the report folder themselves: only
paths and journal records travel through Ray. **On a cluster of several machines the image folder and
the report folder must be on a filesystem every node mounts at the same path** (NFS, CephFS, ...), and
every node needs this package installed (``pip install 'inspector[cluster]'``).

A worker that dies (killed, out of memory, its node lost) is replaced and the batches it held are
scored again; a batch whose worker died `MAX_BATCH_TRIES` times is recorded as unreadable with that
reason, so one image that crashes the process cannot stop the review. Closing the generator (a
cancelled run) kills the actors, and a local cluster this call started is shut down.

What the driver does not hold: a list of the folder's files, or the finished images' records. Those
are appended to the journal and kept in an SQLite index beside it (`Journal` with ``on_disk``), and the
report is streamed from the index in the folder's order, so its memory does not grow with the folder.

Example:
    >>> job = ray_review(Path("archive/2026-11"), Path("archive/2026-11-review"),
    ...                  recipe=Path("recipes/bracket_a.yaml"), address="auto")
    >>> summary = run_to_end(job)
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from inspector._report import write_report
from inspector.capture import iter_image_files
from inspector.errors import InspectorError
from inspector.results import Progress
from inspector.review import (
    JOURNAL_NAME,
    REPORT_EVERY_S,
    Journal,
    ReviewRate,
    ReviewSummary,
    finish_review,
    inspect_files,
    prepare_output,
    recipe_journal_header,
    recipe_report_meta,
    records_in_order,
    relative_name,
)

if TYPE_CHECKING:
    from inspector._report import ReportMeta
    from inspector.station import Station

__all__ = [
    "BATCH_SIZE",
    "IN_FLIGHT_PER_WORKER",
    "MAX_BATCH_TRIES",
    "ReviewWorker",
    "WorkerPool",
    "batched",
    "ray_review",
]

logger = logging.getLogger(__name__)

RAY_MISSING: Final = "Ray is not installed; install it with: pip install 'inspector[cluster]'"
BATCH_SIZE: Final = 8             # images per actor call; the zero-shot review's EXTRACT_BATCH. Ray costs ~1 ms a
                                  # call, an 84-448 px image 20-300 ms, so 8 makes the overhead negligible
IN_FLIGHT_PER_WORKER: Final = 2   # batches outstanding per worker: one scoring, one queued, so none idles
MAX_BATCH_TRIES: Final = 3        # a batch whose worker died this often is recorded as unreadable (ours)
WAIT_S: Final = 1.0               # longest wait for a batch before a progress tick (a place to cancel)
MAX_SKIPPED_LISTED: Final = 10_000  # skipped files named in the summary; more are only logged


# ------------------------------------------------------------------------------------ the actor


class ReviewWorker:
    """What one Ray actor does: holds a `Station` (loaded once) and turns batches of files into journal records.

    A plain class, made an actor by `WorkerPool` (``ray.remote(ReviewWorker)``), so it runs without Ray too.

    Args:
        recipe: the recipe file (a path every node can read).
        folder: the reviewed folder, absolute (every node sees it at this path).
        out: the report folder, absolute: thumbnails and overlays are written here.
        device: ``auto | cpu | cuda``; default: the recipe's.
        weights: DINOv2 weights file; default: the recipe's.
    """

    def __init__(self, *, recipe: Path, folder: Path, out: Path, device: str | None = None,
                 weights: str | Path | None = None) -> None:
        from inspector.recipe import load_recipe
        from inspector.station import Station

        self.folder = folder
        self.out = out
        self.station: Station | None = None
        self.error: str | None = None
        try:
            self.station = Station.load(load_recipe(recipe), device=device, weights=weights)
        except InspectorError as exc:
            # Kept, not raised: an exception in an actor's constructor reaches the driver only as
            # "actor died"; `describe` hands the sentence over instead.
            self.error = str(exc)

    def describe(self) -> dict[str, Any]:
        """What the driver needs for the journal header and the report (or ``error``: why loading failed)."""
        if self.station is None:
            return {"error": self.error}
        return {"error": None, "model_version": self.station.model_version,
                "thresholds": list(self.station.thresholds), "device": self.station.device,
                "region_peak": self.station.region_peak,
                "warnings": list(self.station.warnings), "host": socket.gethostname(), "pid": os.getpid()}

    def score(self, rels: list[str]) -> list[dict[str, Any]]:
        """Score the files (relative POSIX paths under ``folder``); one journal record each, in order.

        Unreadable files give ``"error"`` records (`inspector.review.inspect_files`), never an exception.
        """
        if self.station is None:
            raise InspectorError(self.error or "the station is not loaded")
        thresholds = self.station.thresholds
        # the batch's readable images in one batched model call (Station.inspect_images)
        return inspect_files(self.station, [(self.folder / rel, rel) for rel in rels], self.out, thresholds)


# ------------------------------------------------------------------------------------ the pool


@dataclass(kw_only=True)
class _Batch:
    """Files sent to a worker as one call (the driver's bookkeeping; never crosses threads)."""

    rels: list[str]
    tries: int = 0           # calls of this batch whose worker died
    slot: int = -1           # the worker it was last sent to
    generation: int = -1     # ... and which incarnation of that worker


class WorkerPool:
    """Ray actors with bounded work in flight; a dead actor is replaced and its batches sent again.

    Args:
        make_actor: starts one actor, given its name; the actor has a ``score(rels) -> list`` method.
        workers: how many actors.
        in_flight_per_worker: batches outstanding per actor.
        max_tries: a batch whose actor died this often is given up (`results` yields it with an error).
    """

    def __init__(self, make_actor: Callable[[str], Any], *, workers: int,
                 in_flight_per_worker: int = IN_FLIGHT_PER_WORKER, max_tries: int = MAX_BATCH_TRIES) -> None:
        import ray

        self._ray = ray
        self._make_actor = make_actor
        self._run = uuid.uuid4().hex[:8]
        self.capacity = workers * in_flight_per_worker
        self.max_tries = max_tries
        self.generations = [0] * workers
        self.replaced = 0                        # actors replaced after dying
        self.actors = [make_actor(self._name(slot)) for slot in range(workers)]
        self._load = [0] * workers
        self._in_flight: dict[Any, _Batch] = {}  # ObjectRef -> batch
        self._again: deque[_Batch] = deque()     # batches of dead actors, sent before new ones

    def _name(self, slot: int) -> str:
        return f"inspector-review-{self._run}-w{slot}-g{self.generations[slot]}"

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def results(self, batches: Iterator[list[str]], *, wait_s: float = WAIT_S,
                ) -> Iterator[tuple[list[str], list[dict[str, Any]] | str]]:
        """Send ``batches`` and yield ``(rels, records)`` as they finish, in completion order.

        ``records`` is a string instead when the batch was given up (its actor died `max_tries` times).
        ``(the empty list, the empty list)`` is yielded when nothing finished within ``wait_s``, so the
        caller gets a place to cancel. At most ``capacity`` batches are in flight; ``batches`` is read
        only as room frees up.
        """
        from ray.exceptions import RayActorError, RayTaskError

        exhausted = False
        while True:
            while len(self._in_flight) < self.capacity:
                batch = self._again.popleft() if self._again else None
                if batch is None and not exhausted:
                    rels = next(batches, None)
                    exhausted = rels is None
                    batch = None if rels is None else _Batch(rels=rels)
                if batch is None:
                    break
                self._submit(batch)
            if not self._in_flight:
                return
            ready, _ = self._ray.wait(list(self._in_flight), num_returns=1, timeout=wait_s)
            if not ready:
                yield [], []
            for ref in ready:
                batch = self._in_flight.pop(ref)
                self._load[batch.slot] -= 1
                try:
                    records = self._ray.get(ref)
                except RayActorError as exc:
                    self._replace(batch.slot, batch.generation, exc)
                    batch.tries += 1
                    if batch.tries >= self.max_tries:
                        reason = f"the review worker died {batch.tries} times while scoring this file's batch"
                        yield batch.rels, reason
                    else:
                        self._again.append(batch)
                    continue
                except RayTaskError as exc:
                    # Not a bad image (those are records): the worker cannot write the report folder,
                    # or its model is gone. The run stops as a single-process review would.
                    cause = getattr(exc, "cause", None) or exc
                    msg = f"a review worker failed on the batch from {batch.rels[0]}: {cause}"
                    raise InspectorError(msg) from exc
                yield batch.rels, records

    def _submit(self, batch: _Batch) -> None:
        slot = min(range(len(self.actors)), key=self._load.__getitem__)
        batch.slot, batch.generation = slot, self.generations[slot]
        self._in_flight[self.actors[slot].score.remote(batch.rels)] = batch
        self._load[slot] += 1

    def _replace(self, slot: int, generation: int, exc: BaseException) -> None:
        if self.generations[slot] != generation:
            return                               # replaced already, on an earlier batch of the dead actor
        self.generations[slot] += 1
        self.replaced += 1
        lost = sum(1 for b in self._in_flight.values() if b.slot == slot) + 1
        logger.warning("review worker %d died (%s); started a new one, and its %d batch(es) are scored again",
                       slot, type(exc).__name__, lost)
        self.actors[slot] = self._make_actor(self._name(slot))

    def close(self) -> None:
        """Kill the actors (their work in flight is dropped; the journal has everything finished)."""
        for actor in self.actors:
            try:
                self._ray.kill(actor)
            except Exception as exc:           # an actor already gone must not hide the caller's exception
                logger.debug("review worker: kill failed: %s", exc)
        self._in_flight.clear()
        self._again.clear()


# ------------------------------------------------------------------------------------ the review


def ray_review(
    folder: Path,
    out: Path,
    *,
    recipe: Path,
    address: str | None = None,
    workers: int | None = None,
    batch_size: int = BATCH_SIZE,
    device: str | None = None,
    weights: str | Path | None = None,
) -> Generator[Progress, None, ReviewSummary]:
    """Score every image under ``folder`` with the recipe on a Ray cluster; write the report into ``out``.

    Args:
        folder: the folder of images (searched recursively, hidden files skipped); on a cluster of
            several machines, a path every node mounts.
        out: the report folder; created. Continues an interrupted review (Ray or single-process) made
            with the same recipe and model; one made with other settings is refused.
        recipe: a taught recipe file, readable on every node.
        address: the Ray cluster: ``None`` uses the connection this process already has, else starts a
            local cluster for the run; ``"auto"`` joins the cluster started on this machine with
            ``ray start``; ``"HOST:PORT"`` or ``"ray://HOST:10001"`` a remote one.
        workers: number of actors; default one per GPU of the cluster (when the device is not
            ``cpu``), else one per CPU.
        batch_size: images per actor call.
        device: ``auto | cpu | cuda``; default: the recipe's.
        weights: DINOv2 weights file; default: the recipe's.

    Yields:
        Progress ticks (one per finished batch, and one at least every `WAIT_S` seconds), with rate
        and ETA. Closing the generator stops the workers; the same call later continues the review.

    Returns:
        The `ReviewSummary`, as a single-process review gives it.

    Raises:
        InspectorError: Ray missing, no such folder or no images in it, an ``out`` folder holding
            another review, a recipe or model that cannot be loaded, or a cluster without the
            resources asked for.
    """
    from inspector.recipe import load_recipe

    folder, out = Path(folder), Path(out)
    if workers is not None and workers < 1:
        msg = f"--workers must be 1 or more, got {workers}"
        raise InspectorError(msg)
    if batch_size < 1:
        msg = f"batch size must be 1 or more, got {batch_size}"
        raise InspectorError(msg)
    if not folder.is_dir():
        msg = f"{folder}: not a folder of images to review"
        raise InspectorError(msg)
    ray = _import_ray()
    recipe_obj = load_recipe(recipe)              # a bad recipe file is reported before a cluster starts

    def files() -> Iterator[Path]:
        return iter_image_files(folder, skip=out)

    skipped: list[str] = []          # hidden files and links out of the folder, as a single-process review lists them

    def note_skipped(path: Path, reason: str) -> None:
        logger.warning("review of %s: skipped %s: %s", folder, relative_name(path, folder), reason)
        if len(skipped) < MAX_SKIPPED_LISTED:
            skipped.append(f"{relative_name(path, folder)}: {reason}")

    total = sum(1 for _ in iter_image_files(folder, skip=out, on_skipped=note_skipped))
    prepare_output(folder, out, total)
    start = time.perf_counter()
    yield Progress(done=0, total=total, message="connecting to Ray" if address else "starting Ray")
    started = _connect(ray, address)
    pool: WorkerPool | None = None
    journal: Journal | None = None
    try:
        device = device or recipe_obj.detector.device
        count, options = _plan(ray, workers, device)
        remote = ray.remote(ReviewWorker)
        kwargs = {"recipe": Path(recipe).resolve(), "folder": folder.resolve(), "out": out.resolve(),
                  "device": device, "weights": weights}
        pool = WorkerPool(lambda name: remote.options(name=name, **options).remote(**kwargs), workers=count)
        yield Progress(done=0, total=total, message=f"loading recipe {recipe_obj.name} on {count} worker(s)")
        described = [_describe(ray, actor) for actor in pool.actors]
        first = described[0]
        thresholds = (float(first["thresholds"][0]), float(first["thresholds"][1]), float(first["thresholds"][2]))
        # records on disk (an index beside the journal): the driver never holds one per image
        region_peak = first.get("region_peak")
        journal = Journal(out / JOURNAL_NAME, recipe_journal_header(folder, recipe_obj, first["model_version"],
                                                                    thresholds, runtime=recipe_obj.detector.runtime,
                                                                    region_peak=region_peak),
                          on_disk=True)
        in_order = records_in_order(folder, files, journal)
        hosts = len({d["host"] for d in described})
        model = (f"recipe {recipe_obj.name}, model {first['model_version']} on {first['device']}, "
                 f"Ray: {count} worker(s) on {hosts} node(s)")
        notes = tuple(dict.fromkeys(w for d in described for w in d["warnings"]))
        rate = ReviewRate()

        def meta(complete: bool) -> ReportMeta:
            return recipe_report_meta(folder, recipe_obj, model=model, thresholds=thresholds, total_files=total,
                                      complete=complete, rate=rate, notes=notes, region_peak=region_peak)

        resumed = sum(1 for p in files() if relative_name(p, folder) in journal.records)
        todo = (rel for rel in (relative_name(p, folder) for p in files()) if rel not in journal.records)
        done, scored = resumed, 0
        last_report = time.perf_counter()
        report_every = REPORT_EVERY_S
        for rels, records in pool.results(batched(todo, batch_size)):
            if isinstance(records, str):
                records = [{"file": rel, "status": "error", "error": records} for rel in rels]
            for record in records:
                if record["status"] != "ok":
                    logger.warning("review: %s: %s", record["file"], record["error"])
                journal.append(record)
                rate.tick()
            done += len(records)
            scored += len(records)
            last = f"{rels[-1]}  " if rels else ""
            yield Progress(done=done, total=total, message=f"{last}{rate.text(total - done)}".strip())
            if time.perf_counter() - last_report >= report_every:
                began = time.perf_counter()
                write_report(out, in_order, meta(False))
                last_report = time.perf_counter()
                # the partial report of a huge folder takes a while: at most a tenth of the run goes to it
                report_every = max(REPORT_EVERY_S, 10 * (last_report - began))
        if pool.replaced:
            logger.info("review: %d worker(s) were replaced during the run", pool.replaced)
        summary = finish_review(folder, out, files, journal, meta(True), resumed=resumed, scored=scored,
                                mode="recipe")
    finally:
        if pool is not None:
            pool.close()
        if journal is not None:
            journal.close()
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - start
    summary.pop("scored")
    return ReviewSummary(**summary, seconds=seconds, images_per_second=scored / seconds if seconds > 0 else 0.0,
                         skipped=tuple(skipped))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise InspectorError(RAY_MISSING) from exc
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to the cluster (see `ray_review`'s ``address``); True when this call made the connection."""
    if ray.is_initialized():
        return False                             # the caller's connection (tests, a notebook) is used as it is
    if address is None:
        logger.info("review: starting a local Ray cluster for this run")
        # No dashboard: nothing to serve on a station PC; workers' output stays in Ray's logs, the
        # driver logs every unreadable file itself.
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def _plan(ray: Any, workers: int | None, device: str) -> tuple[int, dict[str, Any]]:
    """How many actors, and the resources of each: a GPU each where there are GPUs to use, else a CPU."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if device == "cuda" and not gpus:
        msg = "the recipe (or --device) asks for cuda, but the Ray cluster has no GPU; pass --device cpu"
        raise InspectorError(msg)
    if device != "cpu" and gpus:
        count = workers or gpus
        options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
        if count > gpus:
            msg = f"--workers {count} asks for a GPU each, but the Ray cluster has {gpus}; pass --workers {gpus}"
            raise InspectorError(msg)
    else:
        count = workers or max(1, cpus)
        options = {"num_cpus": 1}
        if count > cpus:
            msg = f"--workers {count} asks for a CPU each, but the Ray cluster has {cpus}; pass --workers {cpus}"
            raise InspectorError(msg)
    return count, options


def _describe(ray: Any, actor: Any) -> dict[str, Any]:
    from ray.exceptions import RayError

    try:
        described: dict[str, Any] = ray.get(actor.describe.remote())
    except RayError as exc:
        msg = f"a review worker could not start: {exc}"
        raise InspectorError(msg) from exc
    if described["error"]:
        raise InspectorError(described["error"])
    return described


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of ``size`` items (the last one shorter), reading ``items`` lazily."""
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

