"""Teaching a recipe: fit its detector on good images, calibrate the thresholds, save a model version.

Long work is a generator of `Progress` (STYLE.md section 5): each ``yield`` is a progress tick and a
place to cancel (close the generator). The CLI drives it with a progress bar, the GUI from a worker
thread; ``run_to_end`` gives the final `TeachReport` when no progress is wanted.

`teach_and_check` is the teaching screen's whole train step, Qt-free: read the good images, hold some
out, teach (with the ROI drawn), load the new version and score the held-out good and the known-bad
images with it. The wizard (``ui.teach_wizard``) only renders its progress and its `TeachOutcome`.

Example:
    >>> report = run_to_end(teach(recipe, Path("good/")))
    >>> report.version, report.thresholds.fail
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

import cv2
import numpy as np

from inspector._jobs import relay_progress
from inspector.capture import image_files, load_image
from inspector.errors import FrameDecodeError, InspectorError, ModelError
from inspector.results import InspectionResult, Progress, VerdictCounts
from inspector.station import Station, apply_roi, build_detector
from inspector.versions import (
    copy_reference,
    next_version,
    resolve_version,
    set_active_model_version,
    write_reference,
)

if TYPE_CHECKING:
    from inspector.recipe import Recipe
    from models.calibration import Thresholds
    from models.detectors.patch_knn import PatchKNN
    from models.self_tune import SelfTuneResult
    from models.weights import WeightsInfo

__all__ = [
    "GOOD_FROM_REVIEW_COUNT",
    "MAX_CHECK_IMAGES",
    "CalibratedThresholds",
    "CheckStation",
    "EditRecipeCall",
    "SaveThresholdsCall",
    "TaughtVersion",
    "TeachCall",
    "TeachCancelled",
    "TeachEngine",
    "TeachOutcome",
    "TeachReport",
    "add_good_feedback",
    "undo_good_feedback",
    "load_folder",
    "run_to_end",
    "save_thresholds",
    "teach",
    "teach_and_check",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_CHECK_IMAGES = 8         # held-out good and known-bad images checked (each side): the check page shows these
# a zero-shot review's lowest-scoring PASS images taught by default (`inspector train --good-from-review`, the
# Teach screen): in the half-defective 60-image lots of the dev sets the 8 lowest were all good, the 16 lowest
# held 1-2 defective ones (``inspector._review_zero_shot.good_candidates``)
GOOD_FROM_REVIEW_COUNT = 8


class TeachCancelled(InspectorError):
    """Teaching was cancelled before a model was saved; nothing was written."""


@dataclass(frozen=True, kw_only=True, eq=False)
class TeachReport:
    """What teaching produced: the saved version, its thresholds and the scores they came from."""

    recipe: str
    version: str
    model_dir: Path
    thresholds: Thresholds
    n_good: int
    n_defect: int
    good_scores: np.ndarray        # (N,) leave-one-out scores of good training images
    defect_scores: np.ndarray      # (M,) scores of the known-bad images (empty without --defects)
    weights: WeightsInfo
    seconds: float
    skipped: tuple[str, ...] = ()  # "file: reason" for images that could not be read
    tiling: str | None = None      # how the detector tiles its frames (PatchKNN.tiling_summary); None: untiled
    brightness: bool = False       # frames brightness-standardised (PatchKNN.brightness_active)
    self_tune: SelfTuneResult | None = None  # the configuration chosen from the good images (models.self_tune)
    self_tune_note: str | None = None        # why self-tuning did not run (off, too few images, fixed by the recipe)

    def summary_lines(self) -> list[str]:
        """The calibration report, one line each, for the CLI and the GUI."""
        t = self.thresholds
        lines = [
            f"recipe {self.recipe}: saved model {self.version} in {self.model_dir}",
            f"trained on {self.n_good} good image(s)" + (f", checked on {self.n_defect} defect image(s)"
                                                         if self.n_defect else "") + f" in {self.seconds:.1f} s",
            f"weights: {self.weights.name}, {self.weights.source} ({self.weights.location})",
            *([f"tiling: {self.tiling}"] if self.tiling else []),
            *(["brightness: each frame standardised to one grey mean and spread (the scene fills the frame): "
               "lighting that varies from part to part is not scored"] if self.brightness else []),
            *(self.self_tune.summary_lines() if self.self_tune is not None else []),
            *([f"self-tuning: {self.self_tune_note}"] if self.self_tune_note else []),
            f"thresholds: review {t.review:.4f}, fail {t.fail:.4f}, pixel {t.pixel:.4f}"
            + (f", region peak {t.region_peak:.4f}" if t.region_peak is not None else ""),
            f"rule: {t.rule}",
        ]
        extra = {k: getattr(t, k) for k in ("auroc", "f1", "confusion") if getattr(t, k, None) is not None}
        from models.calibration import good_flag_outlook, held_out_defect_rates

        if len(self.good_scores) and self.n_good == 1:
            lines.append("on the line: not known how many good parts will go to REVIEW or FAIL: taught from one "
                         "image, the thresholds come from that image's own patches (each against the others and "
                         "the image turned, its neighbourhood left out), not from other good parts; on a repeating "
                         "texture they sit far below other good parts (most are flagged); teach from more to know")
        elif len(self.good_scores):
            lines.extend([
                "on the line: " + good_flag_outlook(self.good_scores, t.review).sentence("go to REVIEW or FAIL"),
                "on the line: " + good_flag_outlook(self.good_scores, t.fail).sentence("FAIL"),
            ])
        if len(self.defect_scores):
            counts = VerdictCounts.from_scores(self.defect_scores, review=t.review, fail=t.fail)
            flagged = (counts.review + counts.failed) / len(self.defect_scores)
            failed = counts.failed / len(self.defect_scores)
            same = " (the FAIL threshold was set on these same images: optimistic)" if t.n_defect else ""
            lines.append(f"known-bad images: {100 * flagged:.0f} % flagged (REVIEW or FAIL), {100 * failed:.0f} % FAIL "
                         f"of {len(self.defect_scores)}, measured on the images given{same}")
            if t.n_defect and len(self.good_scores):
                lines.append(held_out_defect_rates(self.good_scores, self.defect_scores).sentence())
        if "auroc" in extra:
            lines.append(f"defects: AUROC {extra['auroc']:.3f}" + (f", F1 {extra['f1']:.3f}" if "f1" in extra else ""))
        if "confusion" in extra:
            tn, fp, fn, tp = extra["confusion"]
            lines.append(f"at the fail threshold: good passed {tn}, good rejected {fp}, "
                         f"bad passed {fn}, bad rejected {tp}")
        lines.extend(f"skipped {s}" for s in self.skipped)
        return lines


def run_to_end(job: Generator[Progress, None, T]) -> T:
    """Drive a progress generator to its end and return its value."""
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


def load_folder(
    recipe: Recipe, folder: Path, *, skipped: list[str]
) -> Generator[Progress, None, tuple[list[np.ndarray], list[Path]]]:
    """Read every image of a folder as RGB crops of the recipe's ROI; unreadable files are skipped and listed."""
    files = image_files(folder)
    crops: list[np.ndarray] = []
    used: list[Path] = []
    for i, path in enumerate(files, 1):
        try:
            crop_bgr, _, _ = apply_roi(load_image(path), recipe.roi)
        except (FrameDecodeError, ValueError) as exc:
            why = str(exc)                  # a decode error names the file itself
            skipped.append(why if why.startswith(str(path)) else f"{path}: {why}")
            logger.warning("skipped %s", skipped[-1])
        else:
            crops.append(cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB))
            used.append(path)
        yield Progress(done=i, total=len(files), message=f"reading {path.name}")
    return crops, used


def _masks_for(defect_paths: Sequence[Path], recipe: Recipe) -> list[np.ndarray] | None:
    """Defect masks when every defect image has one: MVTec layout (``../../ground_truth/<type>/<stem>_mask.png``)
    or a ``masks`` folder beside the images. None if any is missing."""
    masks = []
    for path in defect_paths:
        candidates = [
            path.parent / "masks" / f"{path.stem}_mask.png",
            path.parent / "masks" / f"{path.stem}.png",
            path.parents[2] / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
            if len(path.parents) > 2 else path,
        ]
        found = next((c for c in candidates if c != path and c.is_file()), None)
        if found is None:
            return None
        mask = cv2.imread(str(found), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            return None
        full = np.zeros(mask.shape, bool) | (mask > 127)
        crop, _, _ = apply_roi(np.dstack([full.astype(np.uint8)] * 3), recipe.roi)
        masks.append(crop[..., 0].astype(bool))
    return masks


def teach(
    recipe: Recipe,
    good: Path | Sequence[np.ndarray],
    *,
    defects: Path | None = None,
    device: str | None = None,
    weights: str | Path | None = None,
    self_tune: bool = True,
) -> Generator[Progress, None, TeachReport]:
    """Fit the recipe's detector on good images, calibrate, and save a new model version.

    With ``self_tune`` the configuration is first chosen from the good images alone (`models.self_tune`:
    leave-fold-out scores of the good images against synthetic anomalies pasted on them, candidates
    slower than the recipe's ``cycle_time_ms`` skipped); the choice and its numbers are saved in the
    model's ``model.json`` (metadata ``self_tune``) and written in the report.

    Args:
        recipe: the recipe to teach.
        good: a folder of good images, or a list of (H, W, 3) uint8 BGR frames (captured live).
        defects: optional folder of known-bad images; with masks (MVTec layout or ``masks/``) the pixel
            threshold is chosen on them too.
        device: ``auto | cpu | cuda``; default: the recipe's.
        weights: DINOv2 weights file; default: the recipe's, else the resolution order.
        self_tune: choose the configuration from the good images (default); False keeps the recipe's as
            written (reproducible teaching, ``inspector train --fixed-config``).

    Yields:
        Progress ticks (reading, self-tuning, learning, calibrating, saving).

    Returns:
        The `TeachReport` of the saved version.

    Raises:
        InspectorError: no good images, unreadable folders, no weights; nothing is saved then.
    """
    from models.calibration import calibrate
    from models.saved import save_detector

    start = time.perf_counter()
    skipped: list[str] = []
    if isinstance(good, Path):
        if not good.is_dir():
            msg = f"{good}: not a folder of good images"
            raise InspectorError(msg)
        images, _ = yield from load_folder(recipe, good, skipped=skipped)
        where = str(good)
    else:
        images = [cv2.cvtColor(apply_roi(f, recipe.roi)[0], cv2.COLOR_BGR2RGB) for f in good]
        where = "the captured frames"
    if not images:
        msg = f"{where}: no readable good images to teach recipe '{recipe.name}' from"
        raise InspectorError(msg)

    defect_images: list[np.ndarray] = []
    defect_paths: list[Path] = []
    if defects is not None:
        if not defects.is_dir():
            msg = f"{defects}: not a folder of defect images"
            raise InspectorError(msg)
        defect_images, defect_paths = yield from load_folder(recipe, defects, skipped=skipped)

    yield Progress(done=0, total=len(images), message="loading the DINOv2 backbone")
    detector, weights_info = build_detector(recipe, device=device, weights=weights)
    tuned, note = None, None
    if self_tune:
        tuned, note = yield from _self_tune(recipe, detector, images)
        if tuned is not None and tuned.chosen.options:
            detector = type(detector)(backbone=detector.backbone,
                                      config=dataclasses.replace(detector.config, **tuned.chosen.options))
    else:
        note = "off (fixed configuration as the recipe writes it)"
    try:
        yield from relay_progress(lambda progress: detector.fit(images, progress=progress),
                                  message="learning good patches", name="inspector-fit",
                                  cancelled=lambda: TeachCancelled("teaching was cancelled"))
    except ValueError as exc:
        msg = f"recipe '{recipe.name}': {exc}"
        raise ModelError(msg) from exc

    yield Progress(done=0, total=max(1, len(defect_images)), message="calibrating thresholds")
    defect_scores = np.empty(0, np.float32)
    defect_maps: list[np.ndarray] | None = None
    for i, image in enumerate(defect_images, 1):
        det = detector.predict(image)
        defect_scores = np.append(defect_scores, np.float32(det.pred_score[0]))
        defect_maps = (defect_maps or []) + [np.asarray(det.anomaly_map[0])]
        yield Progress(done=i, total=len(defect_images), message="scoring known-bad images")
    masks = _masks_for(defect_paths, recipe) if defect_paths else None
    thresholds = calibrate(
        detector.train_scores,
        good_maps=list(detector.train_maps) or None,
        defect_scores=defect_scores if len(defect_scores) else None,
        defect_maps=defect_maps if masks is not None else None,
        defect_masks=masks,
    )
    if len(images) == 1:
        from models.detectors.one_shot import ONE_SHOT_RULE

        thresholds = dataclasses.replace(thresholds, rule=f"{ONE_SHOT_RULE}; {thresholds.rule}")

    version = next_version(recipe)
    yield Progress(done=0, total=1, message=f"saving model {version.name}")
    save_detector(detector, thresholds, version.path, weights=weights_info,
                  metadata={"recipe": recipe.name, "good_images": len(images), "defect_images": len(defect_images),
                            "source": where,
                            "self_tune": tuned.to_dict() if tuned is not None else {"note": note}})
    write_reference(version.path, cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))   # where defects sit, drawn on it
    set_active_model_version(recipe, version.name)     # taught on purpose: the line uses it
    yield Progress(done=1, total=1, message=f"saved model {version.name}")
    return TeachReport(
        recipe=recipe.name, version=version.name, model_dir=version.path, thresholds=thresholds,
        n_good=len(images), n_defect=len(defect_images),
        good_scores=np.asarray(detector.train_scores, np.float32), defect_scores=defect_scores,
        weights=weights_info, seconds=time.perf_counter() - start, skipped=tuple(skipped),
        tiling=detector.tiling_summary, brightness=detector.brightness_active, self_tune=tuned,
        self_tune_note=note,
    )


def _self_tune(
    recipe: Recipe, detector: PatchKNN, images: list[np.ndarray]
) -> Generator[Progress, None, tuple[SelfTuneResult | None, str | None]]:
    """Choose the configuration for ``detector`` from the good images; (None, why) when it cannot run.

    Candidates that change an option the recipe sets in ``detector.options`` are left out: an option
    written in the recipe is the engineer's choice and is kept.
    """
    from models.self_tune import MIN_IMAGES, candidates_for, self_tune

    if len(images) < MIN_IMAGES:
        return None, f"skipped: it needs at least {MIN_IMAGES} good images, got {len(images)}"
    pinned = set(recipe.detector.options)
    listed = candidates_for(detector.config, images[0].shape[:2], len(images))
    candidates = [c for c in listed if not pinned & set(c.options)]
    if len(candidates) < 2:
        return None, "skipped: the recipe's detector.options fix every option it would choose"
    loose = [c.name for c in candidates if c.plain_background_only]
    only_if = f" ({', '.join(loose)} only for a part on a plain background)" if loose else ""
    yield Progress(done=0, total=1, message=f"self-tuning: checking {len(candidates)} configurations{only_if}",
                   unit="step")
    make = type(detector)
    try:
        result = yield from relay_progress(
            lambda progress: self_tune(images, lambda cfg, backbone: make(backbone=backbone, config=cfg),
                                       detector.config, candidates, detector.backbone,
                                       budget_ms=recipe.cycle_time_ms, progress=progress),
            message="self-tuning: scoring good images and synthetic anomalies", name="inspector-self-tune", unit="fit",
            cancelled=lambda: TeachCancelled("teaching was cancelled"))
    except ValueError as exc:
        msg = f"recipe '{recipe.name}': self-tuning failed: {exc}"
        raise ModelError(msg) from exc
    logger.info("recipe %s: %s", recipe.name, result.reason)
    yield Progress(done=1, total=1, message=f"self-tuning: {result.reason}", unit="step")   # the train log says it
    return result, None


def save_thresholds(
    recipe: Recipe, version: str | None = None, *, review: float, fail: float, pixel: float | None = None
) -> str:
    """Save a copy of a model version with thresholds set by hand (the engineer's slider); returns the new version."""
    from models.saved import save_detector

    if not review <= fail:
        msg = f"the review threshold ({review}) must not be above the fail threshold ({fail})"
        raise ValueError(msg)
    station = Station.load(recipe, version=version, device="cpu")
    old = station.model_thresholds
    scores = getattr(station.detector, "train_scores", None)
    good = np.asarray(scores if scores is not None else [], np.float64).ravel()
    thresholds = dataclasses.replace(
        old, review=float(review), fail=float(fail), pixel=float(old.pixel if pixel is None else pixel),
        rule=f"set by hand from {station.model_version} (review {review:.4f}, fail {fail:.4f}); before: {old.rule}",
        # the shares of the good scores at the new thresholds (None when the model kept no scores)
        expected_false_reject=float((good >= fail).mean()) if good.size else old.expected_false_reject,
        expected_review=float((good >= review).mean()) if good.size else None,
    )
    target = next_version(recipe)
    save_detector(station.detector, thresholds, target.path, weights=station.weights,
                  metadata={"recipe": recipe.name, "derived_from": station.model_version, "change": "thresholds"})
    copy_reference(resolve_version(recipe, station.model_version).path, target.path)
    set_active_model_version(recipe, target.name)      # the engineer saved them on purpose
    return target.name


def add_good_feedback(
    recipe: Recipe, images_bgr: Sequence[np.ndarray], *, device: str | None = None, note: str = ""
) -> str:
    """Operator feedback "actually good": add the frames' patches to the model in use as a new version.

    No retraining: the patches join the memory bank, so similar frames score low from now on. The
    thresholds are kept as they were. The new version is *not* active: the line keeps the version it
    uses until someone makes the new one active (`inspector.recipe.set_active_model_version`), and
    `undo_good_feedback` takes it back. Returns the new version's name.
    """
    from models.saved import save_detector

    if not images_bgr:
        msg = "no images were given as good feedback"
        raise ValueError(msg)
    base = resolve_version(recipe)
    if recipe.model.version == "latest" and recipe.active_model_version() is None:
        set_active_model_version(recipe, base.name)    # pin what runs now, so "latest" stays on it
    station = Station.load(recipe, version=base.name, device=device)
    crops = [cv2.cvtColor(apply_roi(f, recipe.roi)[0], cv2.COLOR_BGR2RGB) for f in images_bgr]
    station.detector.add_normal(crops)
    target = next_version(recipe)
    save_detector(station.detector, station.model_thresholds, target.path, weights=station.weights,
                  metadata={"recipe": recipe.name, "derived_from": base.name, "change": "good feedback",
                            "images": len(crops), "note": note})
    copy_reference(base.path, target.path)
    logger.info("recipe %s: %d good image(s) added as model %s", recipe.name, len(crops), target.name)
    return target.name


def undo_good_feedback(recipe: Recipe, version: str) -> Path:
    """Take back an "actually good" version that is not active: its folder is renamed ``<version>.undone-<time>``.

    Only a version this module made from feedback is touched (its ``model.json`` says so), and never the
    active one; nothing is deleted, so the images it added stay on disk for a later look.

    Returns:
        The renamed folder.

    Raises:
        ModelError: the version is missing, active, or was not made from "actually good" feedback.
    """
    import json

    folder = recipe.model_dir() / version
    try:
        meta = json.loads((folder / "model.json").read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError) as exc:
        msg = f"recipe {recipe.name!r}: model {version} cannot be undone: {folder / 'model.json'} unreadable ({exc})"
        raise ModelError(msg) from exc
    if meta.get("change") != "good feedback":
        msg = f"recipe {recipe.name!r}: model {version} was not made from 'actually good' feedback; not undone"
        raise ModelError(msg)
    if recipe.active_model_version() == version:
        msg = f"recipe {recipe.name!r}: model {version} is active on the line; make another version active first"
        raise ModelError(msg)
    target = folder.with_name(f"{version}.undone-{time.strftime('%Y%m%dT%H%M%S')}")
    folder.rename(target)
    logger.info("recipe %s: good-feedback model %s undone (kept in %s)", recipe.name, version, target)
    return target


# ------------------------------------------------------------------------------ teach, then check


class CalibratedThresholds(Protocol):
    """The thresholds a taught version was calibrated to (`models.calibration.Thresholds` is one)."""

    @property
    def review(self) -> float: ...

    @property
    def fail(self) -> float: ...

    @property
    def pixel(self) -> float: ...


class TaughtVersion(Protocol):
    """What teach-then-check and the teaching screen read of teaching's result (`TeachReport`, or a stand-in's)."""

    @property
    def recipe(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def thresholds(self) -> CalibratedThresholds: ...

    @property
    def good_scores(self) -> np.ndarray: ...      # (N,) leave-one-out scores of the good images taught

    @property
    def defect_scores(self) -> np.ndarray: ...    # (M,) scores of the known-bad images


class CheckStation(Protocol):
    """A loaded model version that scores the check images (`inspector.station.Station` is one)."""

    def inspect_image(self, image_bgr: np.ndarray, *, path: str | None = None) -> InspectionResult: ...


class TeachCall(Protocol):
    """`teach` as teach-then-check calls it: good (H, W, 3) uint8 BGR frames, optionally a known-bad folder."""

    def __call__(self, recipe: Recipe, good: Sequence[np.ndarray], *, defects: Path | None = None
                 ) -> Generator[Progress, None, TaughtVersion]: ...


class SaveThresholdsCall(Protocol):
    """`save_thresholds` as the teaching screen's Save calls it; returns the new version."""

    def __call__(self, recipe: Recipe, version: str | None, *, review: float, fail: float) -> str: ...


class EditRecipeCall(Protocol):
    """`inspector.recipe.edit_recipe_file` as the teaching screen's Save calls it."""

    def __call__(self, source: Path, target: Path, *, name: str | None = None,
                 roi: tuple[int, int, int, int] | None | Literal["keep"] = "keep", new: bool = False,
                 product: str = "") -> Recipe: ...


def _good_candidates(out: Path, count: int) -> list[tuple[Path, float]]:
    """`inspector._review_zero_shot.good_candidates`, imported when first asked for."""
    from inspector._review_zero_shot import good_candidates

    return good_candidates(out, count)


@dataclass(frozen=True, kw_only=True)
class TeachEngine:
    """The engine calls of teach-then-check and of the teaching screen, swappable for a cheap stand-in in tests.

    All run on a worker thread except `load_recipe` and `image_files` (cheap, called by the wizard's pages).
    """

    load_recipe: Callable[[Path], Recipe]
    save_recipe: Callable[[Recipe, Path], object]           # kept for callers; the wizard edits in place
    edit_recipe_file: EditRecipeCall                        # inspector.recipe.edit_recipe_file (on Save)
    teach: TeachCall                                        # inspector.teach.teach
    save_thresholds: SaveThresholdsCall                     # inspector.teach.save_thresholds
    load_station: Callable[[Recipe, str], CheckStation]     # (recipe, version) -> the version loaded
    load_image: Callable[[Path], np.ndarray]                # -> (H, W, 3) uint8 BGR
    image_files: Callable[[Path], list[Path]]
    # (review folder, count) -> the zero-shot review's lowest-scoring PASS images, (file, score), lowest first
    good_from_review: Callable[[Path, int], list[tuple[Path, float]]] = _good_candidates

    @classmethod
    def default(cls) -> TeachEngine:
        """The real engine: ``inspector.recipe``, ``inspector.teach``, ``inspector.station``."""
        from inspector.recipe import edit_recipe_file, load_recipe, save_recipe

        return cls(
            load_recipe=load_recipe, save_recipe=save_recipe, edit_recipe_file=edit_recipe_file, teach=teach,
            save_thresholds=save_thresholds,
            load_station=lambda recipe, version: Station.load(recipe, version=version),
            load_image=load_image, image_files=image_files,
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class TeachOutcome:
    """What teach-then-check produced: the report and the new model's results on the images it did not learn."""

    recipe: Recipe                                 # the Recipe taught (with the ROI drawn)
    report: TaughtVersion                          # TeachReport (or a stand-in engine's report)
    held_out: tuple[InspectionResult, ...] = ()    # held-out good images scored by the new model
    known_bad: tuple[InspectionResult, ...] = ()   # known-bad images scored by the new model
    good_scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))  # (N,) LOO + held-out
    bad_scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))   # (M,)


def teach_and_check(
    engine: TeachEngine,
    recipe: Recipe,
    *,
    good_files: Sequence[Path] = (),
    captured: Sequence[np.ndarray] = (),
    holdout: int = 0,
    bad_files: Sequence[Path] = (),
    defects: Path | None = None,
    roi: tuple[int, int, int, int] | None,
    recipe_file: Path | None = None,
    max_check: int = MAX_CHECK_IMAGES,
) -> Generator[Progress, None, TeachOutcome]:
    """Teach a recipe on good images, then score held-out good and known-bad images with the new version.

    Args:
        engine: the engine calls (`TeachEngine.default()` for the real one).
        recipe: the recipe to teach.
        good_files: good image files; read after ``captured`` frames (BGR), both used as the good set.
        holdout: how many of the last good images are kept out of teaching and scored as a check.
        bad_files: known-bad images scored as a check (the first ``max_check``).
        defects: the folder of known-bad images the calibration uses, or None.
        roi: the rectangle drawn (x, y, w, h), or None for the whole frame; a rectangle that differs from
            the recipe's replaces its ROI for teaching (the recipe file is written later, on Save).
        recipe_file: the recipe's file, named in the progress message when the ROI changed.
        max_check: most held-out and known-bad images scored (each).

    Yields:
        Progress ticks (reading, teaching's own ticks, loading, checking): each a place to cancel.

    Returns:
        The `TeachOutcome`; ``good_scores`` holds teaching's leave-one-out scores then the held-out ones
        (the held-out ones alone when one image was taught: its scores are of its own regions).
    """
    images = list(captured)
    for index, file in enumerate(good_files, 1):
        images.append(engine.load_image(file))
        yield Progress(done=index, total=len(good_files), message=f"reading good image {file.name}")
    held, train = (images[len(images) - holdout:], images[: len(images) - holdout]) if holdout else ([], images)
    current = recipe.roi.rect if recipe.roi is not None else None
    if roi != (tuple(current) if current else None):
        from inspector.recipe import Roi

        recipe = dataclasses.replace(recipe, roi=Roi(rect=roi) if roi else None)
        where = recipe_file.name if recipe_file is not None else "the recipe file"
        yield Progress(done=0, total=0, message=f"the ROI is written into {where} on Save")
    report = yield from engine.teach(recipe, train, defects=defects)
    yield Progress(done=0, total=0, message=f"loading model {report.version} to check it")
    station = engine.load_station(recipe, report.version)
    checked_good: list[InspectionResult] = []
    checked_bad: list[InspectionResult] = []
    good_todo, bad_todo = held[:max_check], list(bad_files)[:max_check]
    total = len(good_todo) + len(bad_todo)
    for image in good_todo:
        checked_good.append(station.inspect_image(image))
        yield Progress(done=len(checked_good), total=total, message="checking held-out good images")
    for file in bad_todo:
        checked_bad.append(station.inspect_image(engine.load_image(file), path=str(file)))
        yield Progress(done=len(good_todo) + len(checked_bad), total=total, message="checking known-bad images")
    held_scores = [r.score for r in checked_good if r.score is not None]
    # taught from one image, its scores are of that image's regions, not of good parts: the good set is the held-out
    taught = np.asarray(report.good_scores if len(train) > 1 else [], np.float32)
    return TeachOutcome(
        recipe=recipe, report=report, held_out=tuple(checked_good), known_bad=tuple(checked_bad),
        good_scores=np.concatenate([taught, np.asarray(held_scores, np.float32)]),
        bad_scores=np.asarray(report.defect_scores, np.float32),
    )
