"""Checking recipe data: YAML read safely, converted field by field into the recipe dataclasses, validated.

`RecipeChecker` turns raw YAML data into dataclasses by their annotations (unknown keys are errors,
with a "did you mean"; every value is checked against its field's type), migrates old file formats
(`SCHEMA_VERSION`) and validates what types cannot say (ranges, names, relations between fields).
It raises `RecipeError` at the first bad field, naming the file, the field, the bad value and what
is allowed. `parse_yaml` is the safe YAML reader that refuses duplicate keys. Other YAML files of the
station (``inspector.lineio.station_config``) use the same checker for the same messages.

`inspector.recipe` owns the dataclasses and the files; this module knows them only as types, so the
import goes one way (recipe -> recipe_check).

Example:
    >>> raw = parse_yaml("name: bracket_a\nsource: {type: folder, path: good}", "r.yaml", None)
    >>> checker = RecipeChecker("r.yaml", None)
    >>> recipe = checker.build(Recipe, checker.migrate(raw), "")        # doctest: +SKIP
    >>> checker.validate(recipe)                                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import math
import re
import reprlib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

import yaml

from inspector import paths
from inspector.capture import CameraSpec, SourceSpec
from inspector.errors import RecipeError
from models.calibration import MAX_SCORE
from models.type_crops import MAX_CROP_SIDE, MIN_CROP_SIDE

if TYPE_CHECKING:
    from inspector.recipe import DetectorSettings, Recipe, Roi

__all__ = [
    "GOOD_LABEL",
    "SCHEMA_VERSION",
    "FrozenOptions",
    "RecipeChecker",
    "is_class_name",
    "parse_yaml",
    "short_repr",
]

logger = logging.getLogger("inspector.recipe")

SCHEMA_VERSION: Final = 1             # bump with a migration in _MIGRATIONS when the file format changes
GOOD_LABEL: Final = "good"            # the feedback label for "no defect"; no defect class may use it

# Recipe names become file and folder names and database keys: lower case, digits, "_" and "-".
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_CLASS_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

_VERSION_RE: Final = re.compile(r"latest|v[1-9][0-9]{0,5}")
_DEVICE_RE: Final = re.compile(r"auto|cpu|cuda(:[0-9]{1,2})?")
_BACKBONE_RE: Final = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)?")     # a timm name, tag optional
_OPTION_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_BLOCK: Final = 48                # deeper than any DINOv2 (ViT-g/14 has 40 blocks)
_MAX_TYPING_K: Final = 50             # ours: more than any few-shot labelling averages; a typo guard
_MAX_SHORTER_SIDE: Final = 4096

_show = reprlib.Repr()                # short, safe reprs of bad values (YAML aliases can be huge or cyclic)
_show.maxstring = 60
_show.maxother = 60
_show.maxlist = _show.maxtuple = _show.maxdict = _show.maxset = 6
_show.maxlevel = 2


def is_class_name(text: str) -> bool:
    """Whether ``text`` has the form of a defect class name (what ``defect_classes`` accepts)."""
    return bool(_CLASS_RE.fullmatch(text))


def short_repr(value: Any) -> str:
    """A short, safe repr of a bad value for a message (YAML aliases can make huge or cyclic data)."""
    return _show.repr(value)


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


# Migrations from version N to N+1, applied to the raw mapping; each logs what it changed.
_MIGRATIONS: Final[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {}


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


def parse_yaml(text: str, where: str, file: Path | None) -> Any:
    """The YAML document ``text`` as plain data (safe loader; a key given twice is an error).

    Args:
        text: the document.
        where: the file name (or ``<recipe>``) for messages.
        file: the file, kept in the error's ``path``; None for text without a file.

    Raises:
        RecipeError: not YAML, with the line and column of the problem.
    """
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


class RecipeChecker:
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
            if value is not None and not (0 <= value <= MAX_SCORE and math.isfinite(value)):   # NaN fails both
                self.fail(f"thresholds.{key}", f"must be a finite number from 0 to {MAX_SCORE:g} or null, got "
                                               f"{value!r} (scores are cosine distances: a threshold above "
                                               f"{MAX_SCORE:g} would pass every part)")
        t = r.thresholds
        if t.region_peak is not None and not (t.region_peak >= 0 and math.isfinite(t.region_peak)):
            self.fail("thresholds.region_peak", f"must be a finite number >= 0 or null (the model's), got "
                                                f"{t.region_peak!r}; 0 shows every region")
        if t.review is not None and t.fail is not None and t.review > t.fail:
            self.fail("thresholds.review", f"({t.review!r}) must not be above thresholds.fail ({t.fail!r}): "
                                           "a part scoring between them is sent to REVIEW")
        if r.min_defect_area_px < 0:
            self.fail("min_defect_area_px", f"must be >= 0, got {r.min_defect_area_px}")
        if r.mm_per_px is not None and not (r.mm_per_px > 0 and math.isfinite(r.mm_per_px)):
            self.fail("mm_per_px",
                      f"must be a number > 0 (millimetres per pixel) or null, got {r.mm_per_px!r}")
        if r.cycle_time_ms is not None and not (r.cycle_time_ms > 0 and math.isfinite(r.cycle_time_ms)):
            self.fail("cycle_time_ms",
                      f"must be a number > 0 (milliseconds per part on the station's device) or null, "
                      f"got {r.cycle_time_ms!r}")
        self._validate_classes(r.defect_classes)
        if not 1 <= r.defect_typing.k <= _MAX_TYPING_K:
            self.fail("defect_typing.k", f"must be a whole number from 1 to {_MAX_TYPING_K} (labelled examples "
                                         f"per type averaged), got {r.defect_typing.k!r}")
        factor = r.defect_typing.unknown_factor
        if not (math.isfinite(factor) and factor > 0):
            self.fail("defect_typing.unknown_factor", f"must be a finite number > 0 (1.25 = the default; larger "
                                                      f"says 'unknown' less often), got {factor!r}")
        colour = r.defect_typing.colour_weight
        if not (math.isfinite(colour) and colour >= 0):
            self.fail("defect_typing.colour_weight", f"must be a finite number >= 0 (0.2 = the default; 0 = the "
                                                     f"region's features only), got {colour!r}")
        side = r.defect_typing.crop_side
        if side != 0 and not MIN_CROP_SIDE <= side <= MAX_CROP_SIDE:
            self.fail("defect_typing.crop_side", f"must be 0 (off) or a whole number of pixels from {MIN_CROP_SIDE} "
                                                 f"to {MAX_CROP_SIDE} (224 = the default), got {side!r}")
        if r.defect_typing.scope not in ("frame", "region"):
            self.fail("defect_typing.scope", f"must be 'frame' (a frame's regions typed together, the default) or "
                                             f"'region' (each on its own), got {r.defect_typing.scope!r}")
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
