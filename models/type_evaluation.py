"""Measure few-shot defect typing on an MVTec-AD-layout category (``inspector evaluate --types N``).

The protocol: fit the detector on good training images and calibrate its pixel threshold from the
leave-one-out maps, as a recipe would be taught. Inspect every defective test image once (one
backbone pass gives the anomaly map and the patch features) and take its largest region at the
pixel threshold (when nothing reaches the threshold, the region of the top 1 % of the map's pixels
stands in, and is counted). Then, for each of ``repeats`` seeded draws, label ``n_labelled`` images
per defect type (the test folder's subfolders), and type the largest region of every other defect
image (with ``DefectTypeConfig.scope`` "frame", the default, that region carries what the station gives
it: the embedding of all the image's regions together): ``accuracy`` is the top-1 share typed right
(``unknown`` counts as wrong), ``unknown_share`` the share typed ``unknown``.

The per-image features and maps can be cached (``cache_dir``) so that repeated runs and other
draws cost no backbone pass.

Example:
    >>> report = evaluate_defect_types(make_detector, load_category("data/mvtec_transistor"), n_labelled=5)
    >>> report.accuracy, report.unknown_share
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from models.calibration import calibrate
from models.defect_types import (
    UNKNOWN,
    DefectTypeClassifier,
    DefectTypeConfig,
    crop_embedder,
    frame_weights,
    nearest_good_patches,
    region_colour,
    region_crop_descriptor,
    region_embedding,
    region_weights,
)
from models.evaluation import ProgressFn, TestItem, load_category, load_image_rgb, select_shots
from models.preprocess import standardise_brightness
from models.regions import Region, find_regions

__all__ = ["TypeEvalReport", "evaluate_defect_types", "labelled_draw", "largest_region_box",
           "largest_region_weights"]

logger = logging.getLogger(__name__)

FALLBACK_QUANTILE: Final = 0.99  # ours: with no region at the pixel threshold, the top 1 % of the map's pixels
DEFAULT_REPEATS: Final = 5       # ours: seeded draws of the labelled images; the report gives their mean


@dataclass(frozen=True, kw_only=True)
class TypeEvalReport:
    """Result of ``evaluate_defect_types``."""

    category: str
    n_labelled: int                   # labelled images per type
    shots: int                        # good training images of the detector
    shot_seed: int                    # seed of the detector's good shots
    seeds: tuple[int, ...]            # one per draw (and the first also chose the ``max_per_type`` images)
    accuracy: float                   # mean over draws of the top-1 accuracy (micro, over test images)
    accuracy_per_draw: tuple[float, ...]
    balanced_accuracy: float          # mean over draws of the mean per-type accuracy
    unknown_share: float              # mean over draws of the share typed "unknown"
    # a type nobody labelled (each type left out in turn): the share of its images typed "unknown"
    novel_unknown_share: float
    per_type: dict[str, float]        # accuracy per type, over all draws
    n_types: int
    n_defect_images: int              # defect images used (after max_per_type)
    max_per_type: int | None          # the cap on defect images per type, None = all
    n_typed_per_draw: int             # test regions per draw (the defect images not labelled)
    fallback_regions: int             # images with no region at the pixel threshold (top 1 % used)
    pixel_threshold: float
    seconds_features: float           # time spent in the backbone and the detector (0 when cached)
    config: dict[str, Any]            # the classifier's options

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        out = asdict(self)
        out["seeds"] = list(self.seeds)
        out["accuracy_per_draw"] = list(self.accuracy_per_draw)
        return out


def largest_region_box(
    anomaly_map: np.ndarray, pixel_threshold: float
) -> tuple[tuple[int, int, int, int], float, bool]:
    """The box of the largest region at ``pixel_threshold``, or of the top 1 % of the map's pixels.

    Returns:
        ((x, y, width, height), the threshold used, whether the fallback was needed).
    """
    regions, threshold, fallback = _regions(anomaly_map, pixel_threshold)
    best = max(regions, key=lambda r: r.area_px)
    return (best.x, best.y, best.width, best.height), threshold, fallback


def _regions(anomaly_map: np.ndarray, pixel_threshold: float) -> tuple[list[Region], float, bool]:
    """The regions at ``pixel_threshold`` (at least one: else those of the top 1 % of the map's pixels),
    the threshold used and whether the fallback was needed."""
    regions = find_regions(anomaly_map, pixel_threshold=pixel_threshold)
    if regions:
        return list(regions), pixel_threshold, False
    threshold = float(np.quantile(anomaly_map, FALLBACK_QUANTILE))
    return list(find_regions(anomaly_map, pixel_threshold=threshold)), threshold, True


def largest_region_weights(anomaly_map: np.ndarray, pixel_threshold: float) -> tuple[np.ndarray, float, bool]:
    """The typed region's per-pixel weights (``region_weights`` of `largest_region_box`'s box).

    Returns:
        ((H, W) float32 weights, the threshold used, whether the fallback was needed).
    """
    box, threshold, fallback = largest_region_box(anomaly_map, pixel_threshold)
    return region_weights(anomaly_map, box=box, pixel_threshold=threshold), threshold, fallback


@dataclass(frozen=True)
class _Item:
    defect_type: str
    embedding: np.ndarray
    fallback: bool


def evaluate_defect_types(
    make_detector: Callable[[], Any],
    category_root: str | Path,
    *,
    n_labelled: int,
    shots: int | None = 16,
    seed: int = 0,
    repeats: int = DEFAULT_REPEATS,
    config: DefectTypeConfig | None = None,
    cache_dir: Path | None = None,
    cache_key: str = "",
    max_per_type: int | None = None,
    draw_seed: int | None = None,
    progress: ProgressFn | None = None,
) -> TypeEvalReport:
    """Few-shot defect typing accuracy on one category (see the module docstring).

    Args:
        make_detector: returns an unfitted ``PatchKNN`` (called only when the cache lacks something).
        category_root: the MVTec-AD-layout category folder.
        n_labelled: labelled images per defect type (>= 1).
        shots: good training images of the detector (None = all).
        seed: the detector's shots; also the first draw's seed unless ``draw_seed`` is given.
        repeats: number of draws.
        config: the classifier's options.
        cache_dir: where per-image features and maps are kept between runs (None = no cache).
        cache_key: names what else changes the features (weights, detector options); part of the
            cache folder's name.
        max_per_type: use at most this many defect images per type (a seeded choice), to bound the
            time on a large category; None uses all.
        draw_seed: first seed of the draws (draw i uses ``draw_seed + i``) and of the ``max_per_type`` choice;
            None: ``seed``. Fixed while ``seed`` varies, the labelled and typed images stay the same and only
            the shots change.
        progress: ``progress(done, total, message)`` per image.

    Raises:
        ValueError: fewer than two defect types, ``n_labelled`` < 1 or ``repeats`` < 1.
    """
    if n_labelled < 1 or repeats < 1:
        msg = f"--types needs at least 1 labelled image per type and 1 draw, got {n_labelled} and {repeats}"
        raise ValueError(msg)
    category = load_category(category_root)
    defects = [t for t in category.test if t.label == 1]
    types = sorted({t.defect_type for t in defects})
    if len(types) < 2:
        msg = (f"{category.root}: defect typing needs test/ subfolders of at least two defect types, "
               f"found {types or 'none'}")
        raise ValueError(msg)
    first = seed if draw_seed is None else draw_seed
    if max_per_type is not None:
        defects = _at_most(defects, max_per_type, seed=first)
    cfg = config if config is not None else DefectTypeConfig()
    items, pixel_threshold, seconds = _extract(make_detector, category.root, defects, shots=shots, seed=seed,
                                               cache_dir=cache_dir, cache_key=cache_key, progress=progress,
                                               residual=cfg.residual, colour=cfg.colour_weight > 0,
                                               crop_side=cfg.crop_side, scope=cfg.scope)

    accuracies, balanced, unknowns, novel = [], [], [], []
    hits: dict[str, list[bool]] = {t: [] for t in types}
    n_typed = 0
    for draw in range(repeats):
        labelled = labelled_draw([it.defect_type for it in items], n_labelled, first + draw)
        classifier = DefectTypeClassifier(config=cfg)
        classifier.add_many([items[i].embedding for i in sorted(labelled)],
                            [items[i].defect_type for i in sorted(labelled)])
        test = [i for i in range(len(items)) if i not in labelled]
        n_typed = len(test)
        predictions = classifier.predict_many(np.stack([items[i].embedding for i in test]))
        right = [p.defect_class == items[i].defect_type for i, p in zip(test, predictions, strict=True)]
        draw_hits: dict[str, list[bool]] = {}
        for i, ok in zip(test, right, strict=True):
            hits[items[i].defect_type].append(ok)
            draw_hits.setdefault(items[i].defect_type, []).append(ok)
        accuracies.append(float(np.mean(right)))
        balanced.append(float(np.mean([np.mean(v) for v in draw_hits.values()])))
        unknowns.append(float(np.mean([p.defect_class == UNKNOWN for p in predictions])))
        for t in types:                   # the same draw with type t never labelled: a new kind of defect
            others = sorted(i for i in labelled if items[i].defect_type != t)
            held = [i for i in test if items[i].defect_type == t]
            if not held:
                continue
            without = DefectTypeClassifier(config=cfg)
            without.add_many([items[i].embedding for i in others], [items[i].defect_type for i in others])
            typed = without.predict_many(np.stack([items[i].embedding for i in held]))
            novel.append(float(np.mean([p.defect_class == UNKNOWN for p in typed])))
    return TypeEvalReport(
        category=category.name, n_labelled=n_labelled, shots=shots or len(category.train_good),
        shot_seed=seed, seeds=tuple(first + d for d in range(repeats)), accuracy=float(np.mean(accuracies)),
        accuracy_per_draw=tuple(accuracies), balanced_accuracy=float(np.mean(balanced)),
        unknown_share=float(np.mean(unknowns)), novel_unknown_share=float(np.mean(novel)) if novel else float("nan"),
        per_type={t: float(np.mean(v)) if v else float("nan") for t, v in hits.items()},
        n_types=len(types), n_defect_images=len(items), max_per_type=max_per_type, n_typed_per_draw=n_typed,
        fallback_regions=sum(it.fallback for it in items), pixel_threshold=pixel_threshold,
        seconds_features=seconds, config=asdict(cfg),
    )


def labelled_draw(types: Sequence[str], n_labelled: int, seed: int) -> set[int]:
    """One draw of labelled images: ``n_labelled`` per type (all of a type with fewer), seeded.

    Args:
        types: the defect type of each image, in the category's order.
        n_labelled: images labelled per type.
        seed: the draw's seed.

    Returns:
        The indices into ``types`` of the labelled images.
    """
    rng = np.random.default_rng(seed)
    labelled: set[int] = set()
    for t in sorted(set(types)):
        members = [i for i, x in enumerate(types) if x == t]
        take = rng.choice(len(members), size=min(n_labelled, len(members)), replace=False)
        labelled.update(members[int(j)] for j in take)
    return labelled


def _at_most(defects: list[TestItem], n: int, *, seed: int) -> list[TestItem]:
    """At most ``n`` items per defect type, a seeded choice, in the original order."""
    if n < 1:
        msg = f"max_per_type must be >= 1 defect image per type, got {n}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for t in sorted({d.defect_type for d in defects}):
        members = [i for i, d in enumerate(defects) if d.defect_type == t]
        keep.update(members[int(j)] for j in rng.choice(len(members), size=min(n, len(members)), replace=False))
    return [d for i, d in enumerate(defects) if i in keep]


def _extract(
    make_detector: Callable[[], Any],
    root: Path,
    defects: list[TestItem],
    *,
    shots: int | None,
    seed: int,
    cache_dir: Path | None,
    cache_key: str,
    progress: ProgressFn | None,
    residual: bool = False,
    colour: bool = False,
    crop_side: int = 0,
    scope: str = "region",
) -> tuple[list[_Item], float, float]:
    """Per defect image: its largest region's embedding (from the cache where present).

    With ``scope`` "frame", the embedding the station gives that region: all the image's regions
    described together (``frame_weights``), the largest region's crop.

    With ``colour``, the region's colour statistics are appended (``region_colour``, from the image
    itself: the cache keeps no pixels).

    With ``residual``, the detector's good bank is needed too (``DefectTypeConfig.residual``); the
    cache keeps it as ``bank.npy`` beside the per-image features.

    With ``crop_side``, the region's crop is re-embedded by the detector's backbone
    (``region_crop_descriptor``; an unfitted detector is enough when everything else is cached); the
    cache keeps each crop descriptor as ``NAME.crop{side}.npy``.
    """
    folder: Path | None = None
    if cache_dir is not None:
        digest = hashlib.sha256(f"{root.resolve()}|{shots}|{seed}|{cache_key}".encode()).hexdigest()[:16]
        folder = cache_dir / f"{root.name}-{digest}"
        folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json" if folder is not None else None
    detector: Any = None
    pixel_threshold: float | None = None
    shorter_side = 448
    seconds = 0.0
    standardised: bool | None = None     # the fitted detector's brightness_active (None: not known yet)
    if meta_path is not None and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        pixel_threshold, shorter_side = float(meta["pixel_threshold"]), int(meta["shorter_side"])
        standardised = meta.get("brightness_active")      # caches from before the option: learnt by fitting

    def fitted() -> Any:
        nonlocal detector, pixel_threshold, shorter_side, seconds, standardised
        if detector is None:
            start = time.perf_counter()
            detector = make_detector()
            category = load_category(root)
            detector.fit([load_image_rgb(p) for p in select_shots(category.train_good, shots, seed=seed)])
            thresholds = calibrate(np.asarray(detector.train_scores), good_maps=detector.train_maps or None)
            seconds += time.perf_counter() - start
            if pixel_threshold is None:
                pixel_threshold = float(thresholds.pixel)
            shorter_side = int(detector.config.shorter_side)
            standardised = bool(getattr(detector, "brightness_active", False))
            if meta_path is not None:
                meta_path.write_text(json.dumps({"pixel_threshold": pixel_threshold, "shorter_side": shorter_side,
                                                 "brightness_active": standardised}), encoding="utf-8")
            if folder is not None:
                np.save(folder / "bank.npy", detector.memory_bank.float().cpu().numpy().astype(np.float16))
        return detector

    nearest_good = None
    if residual:
        bank_path = folder / "bank.npy" if folder is not None else None
        if bank_path is None or not bank_path.is_file() or pixel_threshold is None:
            bank = fitted().memory_bank          # fitting writes bank.npy where there is a cache
        if bank_path is not None:                # the bank as stored (fp16), as a rerun reads it
            bank = np.load(bank_path, allow_pickle=False).astype(np.float32)
        nearest_good = nearest_good_patches(bank)

    embed: Callable[[Any, int], np.ndarray] | None = None

    def crop_part(name: str, image: np.ndarray, box: tuple[int, int, int, int], weights: np.ndarray) -> np.ndarray:
        nonlocal embed, seconds
        cached = folder / f"{name}.crop{crop_side}.npy" if folder is not None else None
        if cached is not None and cached.is_file():
            stored: np.ndarray = np.load(cached, allow_pickle=False).astype(np.float32)
            return stored
        if embed is None:
            if standardised is None:
                fitted()                         # whether the detector standardises its frames
            embed = crop_embedder(detector if detector is not None else make_detector())
            if embed is None:
                msg = "defect typing with a crop needs a detector with a torch backbone (PatchKNN)"
                raise ValueError(msg)
        start = time.perf_counter()
        seen = standardise_brightness(image) if standardised else image     # as the station's crop pass
        vector = region_crop_descriptor(seen, [(box, weights)], embed, side=crop_side)[0]
        seconds += time.perf_counter() - start
        if cached is not None:         # as stored, as above
            np.save(cached, vector.astype(np.float16))
            vector = vector.astype(np.float16).astype(np.float32)
        return vector

    items: list[_Item] = []
    for n, item in enumerate(defects):
        cached = folder / f"{item.defect_type}__{item.path.stem}.npz" if folder is not None else None
        image: np.ndarray | None = None
        if cached is not None and cached.is_file() and pixel_threshold is not None:
            with np.load(cached, allow_pickle=False) as data:
                features, amap = data["features"].astype(np.float32), data["anomaly_map"].astype(np.float32)
        else:
            model = fitted()
            start = time.perf_counter()
            image = load_image_rgb(item.path)
            detection = model.predict(image, with_features=True)
            seconds += time.perf_counter() - start
            features, amap = detection.patch_features[0], np.asarray(detection.anomaly_map[0])
            if cached is not None:     # used as stored (fp16), so that a rerun from the cache types the same
                features, amap = features.astype(np.float16), amap.astype(np.float16)
                np.savez(cached, features=features, anomaly_map=amap)
                features, amap = features.astype(np.float32), amap.astype(np.float32)
        assert pixel_threshold is not None    # set by fitted() or read from the cache's meta.json
        found, threshold, fallback = _regions(amap, pixel_threshold)      # one search serves both scopes
        boxes = [(r.x, r.y, r.width, r.height) for r in found]
        box = boxes[max(range(len(found)), key=lambda i: found[i].area_px)]
        weights = region_weights(amap, box=box, pixel_threshold=threshold)
        described = frame_weights(amap, boxes=boxes, pixel_threshold=threshold) if scope == "frame" else weights
        stats = crop = None
        if colour or crop_side:
            pixels = image if image is not None else load_image_rgb(item.path)
            stats = region_colour(pixels, described) if colour else None
            crop = crop_part(f"{item.defect_type}__{item.path.stem}", pixels, box, weights) if crop_side else None
        items.append(_Item(item.defect_type, region_embedding(features, described, shorter_side=shorter_side,
                                                              nearest_good=nearest_good, colour=stats, crop=crop),
                           fallback))
        if progress is not None:
            progress(n + 1, len(defects), item.defect_type)
    assert pixel_threshold is not None
    return items, pixel_threshold, seconds
