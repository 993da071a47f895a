"""The station's few-shot defect typer: learns from the regions reviewers labelled in the store.

Each inspected region keeps its DINOv2 embedding in the store (``region_embeddings``). A region that
a reviewer classifies (Review screen, ``inspector feedback``: ``Store.set_defect_class``) becomes a
labelled example of its recipe. `DefectTyper` reads those examples and types every new region with
``models.defect_types.DefectTypeClassifier``; it looks for new or changed labels at most every
``refresh_s`` seconds (one indexed query), so a label given in review, in this process or another,
types the next frames without retraining. It guesses once the labels let a guess say something
(`DefectTyper.can_guess`): some type has two examples, whose spread tells a type's own kind from a new
one; a lone first label typed every region as it, at 100 %.

With the typer's ``scope`` "frame" (the default), every region of an inspection carries the same
embedding (all its regions described together), so a label given to every region of an inspection is one
example, not one per region: examples are kept once per (embedding, class).

The typer also keeps the recipe's newest unlabelled embeddings of FAIL frames (``DefectTypeConfig.pool_size``:
read from the store when it starts, then every FAIL frame it types), over which the classifier spreads the labels
(label spreading: a type's cluster is seen through the parts nobody labelled). REVIEW frames are typed but not
pooled: at a line's usual defect rates, good parts flagged REVIEW would outnumber the defects in the pool, and
false alarms in the pool shrink the gain (benchmarks/README.md, typing seventh pass). A FAIL a reviewer calls
good (Review screen, ``inspector feedback ID good``) leaves the pool at the next refresh, and is not read into
it again.

Only the labelled examples whose embedding has the length and layout of the regions being typed are
used: a region embedded by an older descriptor (another backbone, or before the colour statistics
joined the descriptor) keeps its reviewer's class in the store, and the typer says once, in the log,
how many it leaves out.

A triggered station answers the PLC before it types (`PendingTyping`): ``Station.inspect(frame,
defer_typing=True)`` returns the verdict with the regions untyped; the recorder journals it, held back from
the store; the PLC hears the verdict; then `finish_typing` types the regions (the crop pass and the
spreading), the journal entry takes the types and goes on to the store, and the screen and MQTT get the
typed result. A crash in between stores the result untyped (the verdict is never lost).

Example:
    >>> typer = DefectTyper(store, "fryum")                           # doctest: +SKIP
    >>> station.attach_typer(typer)
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import sqlalchemy as sa

from inspector.results import DefectRegion, InspectionResult
from inspector.store import inspections, region_embeddings, regions
from inspector.store.schema import feedback as feedback_table  # (inspector.store.feedback is the module)

if TYPE_CHECKING:
    from inspector.recipe import Recipe
    from inspector.store import Store
    from models.defect_types import DefectTypeConfig, TypePrediction

__all__ = ["DefectTyper", "PendingTyping", "finish_typing", "type_regions", "typer_config"]

logger = logging.getLogger(__name__)

REFRESH_S: Final = 1.0   # ours: how stale the labels may be; one indexed query per refresh


def typer_config(recipe: Recipe) -> DefectTypeConfig:
    """The classifier's options from the recipe's ``defect_typing`` (validated by the recipe loader)."""
    from models.defect_types import DefectTypeConfig

    settings = recipe.defect_typing
    return DefectTypeConfig(k=settings.k, reject_factor=settings.unknown_factor, colour_weight=settings.colour_weight,
                            crop_side=settings.crop_side, scope=settings.scope)


ExampleKey = tuple[bytes, str]   # an example's identity (`_key`): a digest of its embedding, and its class


class DefectTyper:
    """Labelled examples of one recipe, read from the store, and the classifier built on them.

    Args:
        store: the statistics store holding the recipe's regions, labels and embeddings.
        recipe: the recipe's name.
        config: the classifier's options (``models.defect_types.DefectTypeConfig``).
        refresh_s: at most this often, `predict` looks for labels added or changed since.

    Thread-safe: the inspection worker calls `predict`, any thread may call `refresh`.
    """

    def __init__(self, store: Store, recipe: str, *, config: DefectTypeConfig | None = None,
                 refresh_s: float = REFRESH_S) -> None:
        from models.defect_types import DefectTypeClassifier

        self._store = store
        self.recipe = recipe
        self._config = config
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        # region id -> (embedding, class, _key of the two: hashed once, when read)
        self._examples: dict[int, tuple[np.ndarray, str, ExampleKey]] = {}
        self._held: set[ExampleKey] = set()                      # the classifier's examples, by _key
        # the embedding length of the regions typed (set by `predict`); before that, the newest example's
        self._length: int | None = None
        self._classifier = DefectTypeClassifier(config=config)
        self._left_out = 0             # examples of another length or layout, last reported
        self._seen_at = -1.0          # newest classified_at read so far
        self._good_seen_at = -1.0     # newest "good" feedback read so far (its parts leave the pool)
        self._good_done: set[int] = set()   # the feedback rows read at that time (re-read by the next ">=")
        self._checked = -float("inf")  # monotonic time of the last refresh
        self._load_pool()
        self.refresh()

    def _load_pool(self) -> None:
        """The recipe's newest FAIL inspections' unlabelled embeddings from the store, one per inspection, oldest
        first (FAIL, not REVIEW: good parts flagged REVIEW would outnumber the defects in a pool)."""
        if self._classifier.config.spread_alpha <= 0:
            return
        size = self._classifier.config.pool_size
        # the recipe's newest FAIL inspections through the (recipe, time) index, then their unlabelled regions
        called_good = sa.exists().where(feedback_table.c.inspection_id == inspections.c.id,
                                        feedback_table.c.label == "good")
        flagged = (sa.select(inspections.c.id).where(inspections.c.recipe == self.recipe,
                                                     inspections.c.verdict == "FAIL", ~called_good)
                   .order_by(inspections.c.time.desc()).limit(2 * size).subquery())
        first = (sa.select(sa.func.min(regions.c.id).label("id"))
                 .where(regions.c.inspection_id.in_(sa.select(flagged.c.id)), regions.c.defect_class.is_(None))
                 .group_by(regions.c.inspection_id).order_by(regions.c.inspection_id.desc()).limit(size).subquery())
        stmt = (sa.select(region_embeddings.c.vector)
                .where(region_embeddings.c.region_id.in_(sa.select(first.c.id)))
                .order_by(region_embeddings.c.region_id))
        with self._store.engine.connect() as conn:
            vectors = [np.frombuffer(v, dtype=np.float32).copy() for (v,) in conn.execute(stmt)]
        with self._lock:
            self._classifier.add_unlabelled(vectors)
        if vectors:
            logger.info("recipe %s: defect typer read %d unlabelled inspection(s) for label spreading",
                        self.recipe, len(vectors))

    @property
    def config(self) -> DefectTypeConfig:
        """The classifier's options (the descriptor's among them)."""
        with self._lock:
            return self._classifier.config

    @property
    def n_examples(self) -> int:
        """Distinct labelled examples (embedding and class) that the classifier uses."""
        with self._lock:
            return len(self._classifier)

    @property
    def can_guess(self) -> bool:
        """Whether the labels so far let a region's type be guessed (`DefectTypeClassifier.can_judge`): some type has
        two examples. The first label alone typed every region as it, at 100 %."""
        with self._lock:
            return self._classifier.can_judge

    @property
    def n_unlabelled(self) -> int:
        """Unlabelled embeddings the classifier spreads the labels over (the store's at start, then each typed)."""
        with self._lock:
            return self._classifier.n_unlabelled

    @property
    def classes(self) -> tuple[str, ...]:
        """Defect classes that have labelled examples."""
        with self._lock:
            return self._classifier.classes

    def refresh(self) -> int:
        """Read labels added or changed since the last refresh; returns how many were read."""
        from models.defect_types import UNKNOWN

        stmt = (sa.select(regions.c.id, regions.c.defect_class, regions.c.classified_at, region_embeddings.c.vector)
                .join(region_embeddings, region_embeddings.c.region_id == regions.c.id)
                .join(inspections, inspections.c.id == regions.c.inspection_id)
                .where(inspections.c.recipe == self.recipe, regions.c.defect_class.is_not(None),
                       regions.c.classified_at >= self._seen_at)
                .order_by(regions.c.classified_at))
        goods = (sa.select(feedback_table.c.id, feedback_table.c.time, region_embeddings.c.vector)
                 .join(inspections, inspections.c.id == feedback_table.c.inspection_id)
                 .join(regions, regions.c.inspection_id == inspections.c.id)
                 .join(region_embeddings, region_embeddings.c.region_id == regions.c.id)
                 .where(inspections.c.recipe == self.recipe, feedback_table.c.label == "good",
                        feedback_table.c.time >= self._good_seen_at))
        with self._store.engine.connect() as conn:
            rows = list(conn.execute(stmt))
            good_rows = list(conn.execute(goods)) if self._classifier.config.spread_alpha > 0 else []
        with self._lock:
            self._checked = time.monotonic()
            fresh_goods = [(i, t, v) for i, t, v in good_rows if i not in self._good_done]
            if fresh_goods:
                self._good_seen_at = max(self._good_seen_at, max(float(t) for _, t, _ in fresh_goods))
                self._good_done = {i for i, t, _ in good_rows if float(t) >= self._good_seen_at}
                self._drop_from_pool_locked([np.frombuffer(v, dtype=np.float32) for _, _, v in fresh_goods])
            new: list[tuple[np.ndarray, str, ExampleKey]] = []
            changed = False
            for region_id, defect_class, classified_at, vector in rows:
                self._seen_at = max(self._seen_at, float(classified_at or 0.0))
                old = self._examples.get(region_id)
                if old is not None and old[1] == defect_class:
                    continue
                if defect_class == UNKNOWN or not str(defect_class).strip():
                    continue              # "unknown" is what the typer says, not a class it can learn
                embedding = np.frombuffer(vector, dtype=np.float32).copy()
                changed |= old is not None
                self._examples[region_id] = (embedding, defect_class, _key(embedding, defect_class))
                new.append(self._examples[region_id])
            length = self._length if self._length is not None else self._held_length()
            if changed or length is None:  # a relabel, or nothing held yet: rebuild from all examples
                self._rebuild_locked()
            elif new:
                self._add_locked([x for x in new if len(x[0]) == length and self._classifier.accepts(x[0])])
                self._report_left_out_locked()
        if new:
            logger.info("recipe %s: defect typer read %d labelled region(s); %d in use",
                        self.recipe, len(new), self.n_examples)
        return len(new)

    def learn(self, embedding: np.ndarray, defect_class: str) -> None:
        """Add one example at once (a label given in this process before the store is re-read)."""
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        with self._lock:
            self._add_locked([(vector, defect_class, _key(vector, defect_class))])

    def predict(self, embeddings: Sequence[np.ndarray], *, pool: bool = True) -> list[TypePrediction]:
        """Type region embeddings (refreshing the labels first when ``refresh_s`` has passed); with ``pool``, they
        join the unlabelled pool afterwards (the station pools FAIL frames only: see `type_regions`)."""
        with self._lock:
            due = time.monotonic() - self._checked >= self._refresh_s
        if due:
            try:
                self.refresh()
            except sa.exc.SQLAlchemyError as exc:   # a busy database must not cost the frame its types
                logger.warning("recipe %s: could not read new labels: %s", self.recipe, exc)
        if not embeddings:
            return []
        with self._lock:
            length = len(embeddings[0])
            if length != self._length:     # the first regions typed, or a new descriptor: use what fits
                self._length = length
                if self._held_length() not in (None, length):
                    self._rebuild_locked()
            classifier = self._classifier
        typed = classifier.predict_many(np.stack(embeddings))
        if not pool:
            return typed
        fresh = list({_key(e, "")[0]: np.asarray(e, dtype=np.float32) for e in embeddings}.values())  # once a frame
        with self._lock:
            self._classifier.add_unlabelled(fresh)     # the classifier now (a refresh may have rebuilt it)
        return typed

    def _drop_from_pool_locked(self, embeddings: Sequence[np.ndarray]) -> None:
        """Parts a reviewer called good leave the unlabelled pool (false alarms there blur the types' clusters)."""
        pool = self._classifier.unlabelled()
        if not pool or not embeddings:
            return
        held = np.stack(pool)
        gone = np.zeros(len(pool), dtype=bool)
        for embedding in embeddings:
            if len(embedding) == held.shape[1]:      # as held: the same numbers, up to the unit part's rounding
                gone |= np.abs(held - embedding[None]).max(axis=1) < 1e-4
        if gone.any():
            self._rebuild_locked(pool=[v for v, drop in zip(pool, gone, strict=True) if not drop])
            logger.info("recipe %s: %d part(s) a reviewer called good left the typer's unlabelled pool",
                        self.recipe, int(gone.sum()))

    def _held_length(self) -> int | None:
        """The embedding length of the examples the classifier holds (None when it holds none)."""
        return self._classifier.embedding_length

    def _rebuild_locked(self, *, pool: list[np.ndarray] | None = None) -> None:
        """A new classifier from the examples of the typed length (before one is known: the newest's), with the
        unlabelled ``pool`` (default: the one held now, carried over)."""
        from models.defect_types import DefectTypeClassifier

        examples = list(self._examples.values())
        length = self._length if self._length is not None else (len(examples[-1][0]) if examples else None)
        if pool is None:
            pool = self._classifier.unlabelled()       # the unlabelled pool carries over (those of the length)
        self._classifier = DefectTypeClassifier(config=self._config)
        self._held = set()
        self._add_locked([x for x in examples if len(x[0]) == length and self._classifier.accepts(x[0])])
        self._classifier.add_unlabelled([v for v in pool if length is None or len(v) == length])
        self._report_left_out_locked()

    def _add_locked(self, examples: Sequence[tuple[np.ndarray, str, ExampleKey]]) -> None:
        """Add the examples the classifier does not hold yet (the regions of one frame share an embedding)."""
        fresh: dict[ExampleKey, tuple[np.ndarray, str]] = {}
        for embedding, defect_class, key in examples:
            if key not in self._held:
                fresh.setdefault(key, (embedding, defect_class))
        if fresh:
            self._classifier.add_many([e for e, _ in fresh.values()], [c for _, c in fresh.values()])
            self._held.update(fresh)

    def _report_left_out_locked(self) -> None:
        left_out = sum(key not in self._held for _, _, key in self._examples.values())
        if left_out != self._left_out:
            self._left_out = left_out
            if left_out:
                logger.warning("recipe %s: %d labelled region(s) have embeddings of another length or layout than "
                               "the regions typed now (an older descriptor or another backbone); they are not used "
                               "for typing, and their classes stay in the store", self.recipe, left_out)


def _key(embedding: np.ndarray, defect_class: str) -> ExampleKey:
    """An example's identity: a digest of its embedding's bytes and its class."""
    return hashlib.blake2b(np.ascontiguousarray(embedding, dtype=np.float32).tobytes(), digest_size=16).digest(), \
        defect_class


def type_regions(
    found: Sequence[DefectRegion],
    *,
    typer: DefectTyper | None,
    patch_features: np.ndarray,
    crop_map: np.ndarray,
    pixel_threshold: float,
    offset: tuple[int, int],
    shorter_side: int,
    memory_bank: Any = None,
    crop_rgb: np.ndarray | None = None,
    embed_crops: Callable[[Sequence[np.ndarray], int], np.ndarray] | None = None,
    pool: bool = False,
    standardised: bool = False,
) -> tuple[DefectRegion, ...]:
    """The regions with their embedding and, when a typer is given, their predicted type.

    Args:
        found: regions in full-frame coordinates (the ROI's ``offset`` added).
        typer: the recipe's typer, or None to only attach embeddings.
        patch_features: (h, w, D) float32 patch features of the ROI crop (``Detection.patch_features``).
        crop_map: (H, W) float32 anomaly map of the ROI crop.
        pixel_threshold: the threshold that made the regions.
        offset: (x0, y0) of the ROI crop in the frame.
        shorter_side: the detector's ``shorter_side``.
        memory_bank: the detector's (N, D) good bank (``PatchKNN.memory_bank``); used when the
            typer's descriptor takes each patch's residual to its nearest good patch
            (``DefectTypeConfig.residual``).
        crop_rgb: (H, W, 3) uint8 RGB pixels of the ROI crop (the map's size); when the typer's
            descriptor takes colour (``DefectTypeConfig.colour_weight``), each region's colour
            statistics against its surroundings are appended from them.
        embed_crops: the detector's backbone (``models.defect_types.crop_embedder``); when the typer's
            descriptor takes the region's crop (``DefectTypeConfig.crop_side``), every region's crop of
            ``crop_rgb`` is re-embedded, the ``crop_regions`` largest in one batch (the others' frame
            pooling stands in). Without it, or without ``crop_rgb``, the embeddings have no crop part
            (and labels made with one are not used for them).
        pool: the embeddings join the typer's unlabelled pool after typing (the station: FAIL frames).
        standardised: the detector standardised the frame's brightness before its backbone
            (``PatchKNN.brightness_active``); the crop pass then cuts its crops from the frame as the
            detector saw it, so that both parts of the embedding see the same pixels (the colour
            statistics keep the frame's own).

    With the typer's ``scope`` "frame" (the default), the regions are described together
    (``frame_weights``; the largest region's crop; the colour of all of them) and every region gets that
    one embedding and its type; "region" describes and types each on its own.

    Raises:
        ValueError: the typer takes colour and ``crop_rgb`` is missing or not the map's size.
    """
    import dataclasses

    from models.defect_types import (
        frame_weights,
        nearest_good_patches,
        region_colour,
        region_crop_descriptor,
        region_embedding,
        region_weights,
    )
    from models.preprocess import standardise_brightness

    if not found:
        return ()
    x0, y0 = offset
    residual = typer is not None and typer.config.residual and memory_bank is not None
    nearest_good = nearest_good_patches(memory_bank) if residual else None
    colour = typer is not None and typer.config.colour_weight > 0
    if colour and (crop_rgb is None or crop_rgb.shape[:2] != crop_map.shape):
        got = "none" if crop_rgb is None else f"shape {crop_rgb.shape}"
        msg = f"defect typing with colour needs the ROI's pixels at the map's size {crop_map.shape}, got {got}"
        raise ValueError(msg)
    boxes = [(r.x - x0, r.y - y0, r.width, r.height) for r in found]
    side = typer.config.crop_side if typer is not None else 0
    can_crop = bool(side) and embed_crops is not None and crop_rgb is not None and crop_rgb.shape[:2] == crop_map.shape
    seen = standardise_brightness(crop_rgb) if can_crop and standardised and crop_rgb is not None else crop_rgb
    if typer is not None and typer.config.scope == "frame":
        # one embedding for the frame's regions together (the largest's crop), and one type for all of them
        whole = frame_weights(crop_map, boxes=boxes, pixel_threshold=pixel_threshold)
        close_up: np.ndarray | None = None
        if can_crop:
            assert embed_crops is not None and seen is not None
            box = boxes[max(range(len(found)), key=lambda i: found[i].area_px)]
            close_up = region_crop_descriptor(
                seen, [(box, region_weights(crop_map, box=box, pixel_threshold=pixel_threshold))], embed_crops,
                side=side)[0]
        stats = region_colour(crop_rgb, whole) if colour and crop_rgb is not None else None
        embedding = region_embedding(patch_features, whole, shorter_side=shorter_side, nearest_good=nearest_good,
                                     colour=stats, crop=close_up)
        typed = typer.predict([embedding], pool=pool)
        one = typed[0] if typer.can_guess else None
        return tuple(
            dataclasses.replace(r, embedding=embedding, predicted_class=one.defect_class if one is not None else None,
                                type_confidence=one.confidence if one is not None else None)
            for r in found
        )
    weights = [region_weights(crop_map, box=box, pixel_threshold=pixel_threshold) for box in boxes]
    crops: list[np.ndarray | Literal["frame"] | None] = [None] * len(found)
    if can_crop:
        assert typer is not None and embed_crops is not None and seen is not None
        # the largest regions get the crop pass; the others' frame pooling stands in (one layout for all)
        largest = sorted(range(len(found)), key=lambda i: -found[i].area_px)[:typer.config.crop_regions]
        described = region_crop_descriptor(seen, [(boxes[i], weights[i]) for i in largest], embed_crops,
                                           side=side)
        crops = ["frame"] * len(found)
        for i, vector in zip(largest, described, strict=True):
            crops[i] = vector
    embeddings = []
    for w, crop in zip(weights, crops, strict=True):
        stats = region_colour(crop_rgb, w) if colour and crop_rgb is not None else None
        embeddings.append(region_embedding(patch_features, w, shorter_side=shorter_side,
                                           nearest_good=nearest_good, colour=stats, crop=crop))
    predictions: Sequence[TypePrediction | None] = [None] * len(found)
    if typer is not None:
        typed = typer.predict(embeddings, pool=pool)
        if typer.can_guess:        # too few labels yet: no guess, rather than "unknown" or the one type everywhere
            predictions = typed
    return tuple(
        dataclasses.replace(r, embedding=e,
                            predicted_class=p.defect_class if p is not None else None,
                            type_confidence=p.confidence if p is not None else None)
        for r, e, p in zip(found, embeddings, predictions, strict=True)
    )


TypedListener = Callable[[tuple[DefectRegion, ...]], None]


class PendingTyping:
    """A result's defect typing, run once after its verdict was reported (`finish_typing`).

    ``work`` returns the result's regions typed (embeddings, predicted types). `run` calls it at most
    once, from whichever thread comes first; a failure leaves the regions as they were (typing is an aid,
    never a reason to lose a result). Listeners (`add_done_callback`: the recorder's held journal entry,
    the screen) get the typed regions once typing is over, or at once if it already is; `applied` gives
    the result typed, with the typing's time in its ``postprocess_ms`` (where inline typing counts it).

    Thread-safe.
    """

    def __init__(self, work: Callable[[], tuple[DefectRegion, ...]], untyped: tuple[DefectRegion, ...]) -> None:
        self._work: Callable[[], tuple[DefectRegion, ...]] | None = work
        self._regions = untyped
        self._ms = 0.0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._listeners: list[TypedListener] = []

    @property
    def done(self) -> bool:
        """Whether typing is over (typed, failed or dropped)."""
        return self._done.is_set()

    def run(self) -> tuple[DefectRegion, ...]:
        """Type the regions (once; a second call waits for the first) and tell the listeners."""
        with self._lock:
            work, self._work = self._work, None      # the features it holds are freed once it has run
            if work is not None:
                started = time.perf_counter()
                try:
                    self._regions = work()
                except Exception:
                    logger.exception("defect typing failed; the result is kept with its regions untyped")
                self._ms = (time.perf_counter() - started) * 1000.0
            listeners, self._listeners = self._listeners, []
            self._done.set()
        for listener in listeners:
            self._tell(listener)
        return self._regions

    def applied(self, result: InspectionResult) -> InspectionResult:
        """``result`` (the one this typing belongs to) with the regions as typed so far and no pending typing;
        its ``postprocess_ms`` includes the typing's time once typing has run."""
        import dataclasses

        with self._lock:
            regions, ms = self._regions, self._ms
        times = dataclasses.replace(result.times, postprocess_ms=result.times.postprocess_ms + ms)
        return dataclasses.replace(result, regions=regions, typing=None, times=times)

    def add_done_callback(self, listener: TypedListener) -> None:
        """Call ``listener(regions)`` once typing is over (now, on this thread, if it already is)."""
        with self._lock:
            if not self._done.is_set():
                self._listeners.append(listener)
                return
        self._tell(listener)

    def _tell(self, listener: TypedListener) -> None:
        try:
            listener(self._regions)
        except Exception:
            logger.exception("listener %r of a typed result failed", listener)


def finish_typing(result: InspectionResult) -> InspectionResult:
    """``result`` with its regions typed (and the typing's time in ``postprocess_ms``), when its typing was left
    for after the answer; else ``result``."""
    pending = result.typing
    if pending is None:
        return result
    pending.run()
    return pending.applied(result)
