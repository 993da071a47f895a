"""Recipes: loading, validation messages, atomic saving, path resolution (`inspector.recipe`)."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.capture import CameraSpec, FolderSpec
from inspector.errors import ModelError, RecipeError
from inspector.recipe import (
    DetectorSettings,
    FrozenOptions,
    Recipe,
    Roi,
    dump_recipe,
    list_recipes,
    load_recipe,
    parse_recipe,
    save_recipe,
)

FAST_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)    # libyaml: keeps the fuzz test cheap
REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))

VALID: dict[str, Any] = {
    "schema_version": 1,
    "name": "bracket_a",
    "product": "Bracket A",
    "line": "L2",
    "station": "S3",
    "source": {"type": "folder", "path": "images/good", "fps": 4, "loop": True},
    "roi": {"rect": [10, 20, 56, 56]},
    "preprocess": {"shorter_side": 224},
    "detector": {"name": "patch_knn", "backbone": "vit_small_patch14_dinov2", "blocks": [8],
                 "weights": None, "options": {"k": 1, "masking": False, "rotations": [0, 90]},
                 "device": "cpu"},
    "model": {"directory": None, "version": "latest"},
    "thresholds": {"review": 0.2, "fail": 0.3, "pixel": None},
    "min_defect_area_px": 25,
    "mm_per_px": 0.1,
    "defect_classes": ["scratch", "dent", "other"],
    "defect_typing": {"k": 3, "unknown_factor": 1.5, "colour_weight": 0.0, "crop_side": 0, "scope": "region"},
    "archive": {"enabled": True, "directory": None, "save_pass_every": 0, "max_size_mb": 512},
}


def write(folder: Path, data: Any, name: str = "recipe.yaml") -> Path:
    path = folder / name
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def with_change(dotted: str, value: Any) -> dict[str, Any]:
    """VALID with one field set (``value is DELETE`` removes it); ``a.b`` reaches into sections."""
    data = copy.deepcopy(VALID)
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()


# ---- shipped recipes -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_recipes_load_and_round_trip(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.path == path
    assert path.stem == recipe.name, "a recipe file is named after its recipe"
    saved = save_recipe(recipe, tmp_path / path.name)
    assert saved == recipe
    assert load_recipe(tmp_path / path.name) == recipe


def test_shipped_names_are_unique() -> None:
    names = [load_recipe(p).name for p in SHIPPED]
    assert len(names) == len(set(names)) >= 2


def test_demo_recipe_points_at_demo_data_and_user_model_dir(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path))
    recipe = load_recipe(REPO / "recipes" / "fryum_demo.yaml")
    source = recipe.resolved_source()
    assert isinstance(source, FolderSpec)
    assert source.path == REPO / "inspector" / "demo_data" / "visa_fryum" / "test"
    assert recipe.model_dir() == tmp_path / "models" / "fryum_demo"
    assert recipe.archive_dir() == tmp_path / "archive" / "fryum_demo"
    assert recipe.thresholds.fail is None and recipe.model.version == "latest"


# ---- a valid recipe --------------------------------------------------------------------------------

def test_valid_recipe_types(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, VALID))
    assert recipe.source == FolderSpec(path=Path("images/good"), fps=4.0, loop=True)
    assert recipe.roi == Roi(rect=(10, 20, 56, 56))
    assert recipe.detector.blocks == (8,)
    assert recipe.detector.options == {"k": 1, "masking": False, "rotations": (0, 90)}
    assert recipe.defect_classes == ("scratch", "dent", "other")
    typing = recipe.defect_typing
    assert (typing.k, typing.unknown_factor, typing.colour_weight, typing.crop_side, typing.scope) == \
        (3, 1.5, 0.0, 0, "region")
    assert isinstance(recipe.archive.max_size_mb, float)
    assert recipe.to_dict()["detector"]["options"]["rotations"] == [0, 90]
    assert "path" not in recipe.to_dict()


def test_recipe_is_frozen_and_hashable(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, VALID))
    with pytest.raises(TypeError):
        recipe.detector.options["k"] = 5  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.name = "other"  # type: ignore[misc]
    assert hash(recipe) == hash(load_recipe(write(tmp_path, VALID, "again.yaml")))
    assert {**recipe.detector.options, "shorter_side": 224}["k"] == 1, "reads like a dict"
    built = DetectorSettings(options={"k": 3})
    assert isinstance(built.options, FrozenOptions) and built.options == {"k": 3}


def test_minimal_recipe_gets_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, {"schema_version": 1, "name": "m", "source": {"type": "camera"}}))
    assert recipe.source == CameraSpec()
    assert recipe.detector.name == "patch_knn" and recipe.preprocess.shorter_side == 448
    assert recipe.thresholds.review is None and recipe.archive.enabled


def test_camera_url_and_int_labels(tmp_path: Path) -> None:
    data = with_change("source", {"type": "camera", "device": "rtsp://cam/1", "fps": 10})
    data["station"] = 3                          # unquoted YAML number used as a label
    recipe = load_recipe(write(tmp_path, data))
    assert recipe.source == CameraSpec(device="rtsp://cam/1", fps=10.0)
    assert recipe.station == "3"


def test_resolve_relative_and_absolute(tmp_path: Path) -> None:
    data = with_change("detector.weights", "../weights/dino.safetensors")
    data["model"] = {"directory": str(tmp_path / "abs_models"), "version": "latest"}
    data["archive"]["directory"] = "archive"
    (tmp_path / "recipes").mkdir()
    recipe = load_recipe(write(tmp_path / "recipes", data))
    assert recipe.weights_path() == tmp_path / "weights" / "dino.safetensors"
    assert recipe.model_dir() == tmp_path / "abs_models"
    assert recipe.archive_dir() == tmp_path / "recipes" / "archive"
    source = recipe.resolved_source()
    assert isinstance(source, FolderSpec) and isinstance(recipe.source, FolderSpec)
    assert source.path == tmp_path / "recipes" / "images" / "good"
    assert recipe.source.path == Path("images/good"), "the stored path stays as written"


def test_model_versions(tmp_path: Path) -> None:
    data = with_change("model.directory", "models")
    recipe = load_recipe(write(tmp_path, data))
    with pytest.raises(ModelError, match="no taught model.*teach it first"):
        recipe.model_version_dir()
    for v in ("v1", "v2", "v10", "scratch"):
        (tmp_path / "models" / v).mkdir(parents=True)
    assert recipe.model_versions() == ["v1", "v2", "v10"]
    assert recipe.model_version_dir() == tmp_path / "models" / "v10"
    pinned = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, version="v2"))
    assert pinned.model_version_dir() == tmp_path / "models" / "v2"
    missing = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, version="v3"))
    with pytest.raises(ModelError, match="pins model version v3.*has v1, v2, v10"):
        missing.model_version_dir()


def test_roi_mask_and_box() -> None:
    rect = Roi(rect=(2, 3, 4, 5))
    mask = rect.mask(10, 12)
    assert mask.shape == (10, 12) and mask.dtype == bool
    assert mask.sum() == 20 and mask[3, 2] and mask[7, 5] and not mask[8, 5]
    assert rect.bounding_box() == (2, 3, 4, 5)
    tri = Roi(polygon=((0, 0), (9, 0), (0, 9)))
    assert tri.bounding_box() == (0, 0, 10, 10)
    tri_mask = tri.mask(12, 12)
    assert tri_mask[1, 1] and not tri_mask[9, 9]
    assert np.count_nonzero(tri_mask) < 100


# ---- errors ----------------------------------------------------------------------------------------

ERRORS = [
    # (field set to value, expected .field, message must match)
    ("thresholds.fail", "high", "thresholds.fail", r"thresholds\.fail must be a number, got 'high'"),
    ("thresholds.fial", 0.5, "thresholds.fial", r"did you mean 'fail'\?"),
    ("detecter", {}, "detecter", r"did you mean 'detector'\?.*allowed here: schema_version, name"),
    ("thresholds.review", 0.5, "thresholds.review", r"\(0\.5\) must not be above thresholds\.fail \(0\.3\)"),
    ("thresholds.pixel", -0.1, "thresholds.pixel", r"must be a finite number from 0 to 2 or null, got -0\.1"),
    ("thresholds.region_peak", -0.1, "thresholds.region_peak", r"must be a finite number >= 0 or null .*got -0\.1"),
    ("thresholds.region_peak", math.inf, "thresholds.region_peak", r"must be a finite number, got inf"),
    ("mm_per_px", math.nan, "mm_per_px", r"must be a finite number, got nan"),
    ("mm_per_px", 0, "mm_per_px", r"must be a number > 0"),
    ("min_defect_area_px", -1, "min_defect_area_px", r"must be >= 0, got -1"),
    ("min_defect_area_px", 2.5, "min_defect_area_px", r"must be a whole number, got 2\.5"),
    ("roi", {"polygon": [[0, 0], [5, 5]]}, "roi.polygon", r"needs at least 3 points, got 2"),
    ("roi", {"polygon": [[0, 0], [5, 5], [9, 9]]}, "roi.polygon", r"encloses no area"),
    ("roi", {"rect": [0, 0, 10, 10], "polygon": [[0, 0], [5, 0], [0, 5]]}, "roi", r"exactly one of rect"),
    ("roi", {"rect": [0, 0, 10]}, "roi.rect", r"must be a list of 4 items"),
    ("roi", {"rect": [0, 0, 0, 10]}, "roi.rect", r"w, h > 0"),
    ("roi", {"circle": 5}, "roi.circle", r"is not a known field \(allowed here: rect, polygon\)"),
    ("roi", [1, 2], "roi", r"must be a mapping"),
    ("source.type", "usb", "source.type", r"must be one of camera, video, folder, genicam, got 'usb'"),
    ("source.type", DELETE, "source.type", r"is required; one of camera, video, folder, genicam"),
    ("source.path", DELETE, "source.path", r"is required \(a file path\)"),
    ("source.fps", -4, "source.fps", r"must be a number > 0 or null, got -4\.0"),
    ("source.loop", "yes please", "source.loop", r"must be true or false"),
    ("source", DELETE, "source", r"is required \(a mapping with type: camera \| video \| folder \| genicam"),
    ("name", "Bracket A", "name", r"a-z, 0-9.*got 'Bracket A'"),
    ("name", DELETE, "name", r"is required \(text\)"),
    ("detector.blocks", [0], "detector.blocks[0]", r"block number from 1"),
    ("defect_typing.k", 0, "defect_typing.k", r"whole number from 1 to 50 .*got 0"),
    ("defect_typing.k", 1.5, "defect_typing.k", r"must be a whole number, got 1\.5"),
    ("defect_typing.unknown_factor", -1, "defect_typing.unknown_factor", r"finite number > 0 .*got -1"),
    ("defect_typing.colour_weight", -0.5, "defect_typing.colour_weight", r"finite number >= 0 .*got -0\.5"),
    ("defect_typing.crop_side", 30, "defect_typing.crop_side", r"0 \(off\) or a whole number of pixels from 56 "
                                                                r"to 896 .*got 30"),
    ("defect_typing.unknown_factor", math.inf, "defect_typing.unknown_factor", r"finite"),
    ("defect_typing.k_nn", 3, "defect_typing.k_nn",
     r"not a known field \(allowed here: k, unknown_factor, colour_weight, crop_side, scope\)"),
    ("defect_typing.scope", "part", "defect_typing.scope", r"must be 'frame' .* or 'region' .*got 'part'"),
    ("detector.blocks", "8", "detector.blocks", r"must be a list, got '8'"),
    ("detector.blocks", [8, 8], "detector.blocks", r"lists a block twice"),
    ("detector.device", "gpu", "detector.device", r"'auto', 'cpu', 'cuda'.*got 'gpu'"),
    ("detector.name", "models.detectors.PatchKNN", "detector.name", r"registered detector name"),
    ("detector.options", {"k": [[1]]}, "detector.options.k[0]", r"must be a number, text"),
    ("detector.options", {"k": math.inf}, "detector.options.k", r"finite"),
    ("defect_classes", ["good", "scratch"], "defect_classes[0]", r"must not be 'good'"),
    ("defect_classes", ["dent", "dent"], "defect_classes", r"lists dent more than once"),
    ("defect_classes", [], "defect_classes", r"at least one class"),
    ("model.version", 3, "model.version", r"'latest' or a version such as 'v3', got '3'"),
    ("preprocess.shorter_side", 10, "preprocess.shorter_side", r"between 14 and 4096"),
    ("archive.save_pass_every", -5, "archive.save_pass_every", r"must be >= 0"),
    ("archive.max_size_mb", 0, "archive.max_size_mb", r"must be a number > 0"),
    ("schema_version", 2, "schema_version", r"written by a newer inspector.*upgrade"),
    ("schema_version", "one", "schema_version", r"whole number >= 1, got 'one'"),
]


@pytest.mark.parametrize(("dotted", "value", "field", "pattern"), ERRORS,
                         ids=[f"{e[0]}={e[1]!r}"[:40] for e in ERRORS])
def test_invalid_field(tmp_path: Path, dotted: str, value: Any, field: str, pattern: str) -> None:
    path = write(tmp_path, with_change(dotted, value))
    with pytest.raises(RecipeError, match=pattern) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: {field} ")
    assert info.value.field == field
    assert info.value.path == path


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", r"is empty; a recipe needs"),
        ("# only a comment\n", r"is empty"),
        ("- a\n- b\n", r"must be a mapping of fields"),
        ("name: x\nsource: {type: folder\nline: L1\n",
         r"YAML syntax error at line 3, column 5: .*flow mapping that starts at line 2\)"),
        ("name: x\n  bad: indent\n", r"YAML syntax error at line 2"),
        ("when: 2024-13-45\n", r"cannot be read as YAML"),
        ("name: !!python/object/apply:os.system ['echo pwned']\n", r"YAML syntax error.*python/object"),
        ("1: x\n", r"has a key that is not text: 1"),
    ],
)
def test_unreadable_text(tmp_path: Path, text: str, pattern: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError, match=pattern) as info:
        load_recipe(path)
    assert str(info.value).startswith(str(path))


def test_missing_file_folder_and_binary(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"nope\.yaml: recipe file not found; check the path"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match=r"is a folder, not a recipe file"):
        load_recipe(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\x00")
    with pytest.raises(RecipeError, match=r"is not UTF-8 text"):
        load_recipe(binary)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20))
    with pytest.raises(RecipeError, match=r"is larger than 1024 KiB"):
        load_recipe(big)


def test_recipe_never_imports_what_it_names(tmp_path: Path) -> None:
    """A recipe is data: a python tag is refused and nothing runs."""
    marker = tmp_path / "ran"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(RecipeError):
        load_recipe(write(tmp_path, text))
    assert not marker.exists()


def test_huge_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """Aliases can make a value exponentially large; the message must stay short."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 6)}]" for i in range(1, 12)]
    with pytest.raises(RecipeError, match=r"a0 is not a known field") as info:
        load_recipe(write(tmp_path, "\n".join(lines) + "\n"))
    assert len(str(info.value)) < 1000


# ---- saving ----------------------------------------------------------------------------------------

def test_save_round_trip_and_path(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, VALID))
    target = tmp_path / "out" / "copy.yaml"
    target.parent.mkdir()
    saved = save_recipe(recipe, target)
    assert saved == recipe and saved.path == target
    assert load_recipe(target) == recipe
    assert [p.name for p in target.parent.iterdir()] == ["copy.yaml"], "no temporary file left"
    assert target.read_text(encoding="utf-8").startswith("# bracket_a: inspection recipe")


def test_save_refuses_invalid_recipe_and_keeps_old_file(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    before = path.read_bytes()
    bad = dataclasses.replace(load_recipe(path), name="Not A Name")
    with pytest.raises(RecipeError, match=r"name must be 1-64 characters"):
        save_recipe(bad, path)
    assert path.read_bytes() == before


def test_save_failure_mid_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, VALID)
    before = path.read_bytes()
    recipe = dataclasses.replace(load_recipe(path), line="L9")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(RecipeError, match=r"cannot write the recipe: No space left on device"):
        save_recipe(recipe, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"], "temporary file removed"


def test_save_to_missing_folder(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, VALID))
    with pytest.raises(RecipeError, match=r"cannot write the recipe.*folder exists"):
        save_recipe(recipe, tmp_path / "missing" / "r.yaml")


def test_list_recipes(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", ".a.yaml.123.tmp", ".hidden.yaml", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "dir.yaml").mkdir()
    assert [p.name for p in list_recipes(tmp_path)] == ["a.yml", "b.yaml"]
    with pytest.raises(RecipeError, match=r"recipe folder not found"):
        list_recipes(tmp_path / "nope")


# ---- property-based: the loader returns a Recipe or raises RecipeError, nothing else -------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["camera", "folder", "video", "genicam", "latest", "v2", "auto", "cuda", "good"]),
)
def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # a named function: hypothesis reads a multi-line lambda's source wrongly and warns it ignores `inner`
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4))


values = st.recursive(scalars, _containers, max_leaves=10)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


ALL_PATHS = list(_paths(VALID))
FIELD_NAMES = sorted({str(p[-1]) for p in ALL_PATHS if isinstance(p[-1], str)})


@st.composite
def mutated_recipes(draw: st.DrawFn) -> str:
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        where = draw(st.sampled_from(ALL_PATHS))
        node = data
        try:
            for key in where[:-1]:
                node = node[key]
            action = draw(st.sampled_from(["set", "delete", "add"]))
            if action == "set":
                node[where[-1]] = draw(values)
            elif action == "delete":
                del node[where[-1]]
            elif isinstance(node, dict):
                node[draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=6))] = draw(values)
        except (KeyError, IndexError, TypeError):
            pass                                   # an earlier mutation removed this path
    return yaml.dump(data, Dumper=FAST_DUMPER, sort_keys=False)


yaml_text = st.one_of(
    st.text(max_size=80),                                                  # anything at all
    st.text(alphabet="abcnt:-[]{}&*!|>#'\"\n 0123456789.,?%@`", max_size=80),  # YAML punctuation soup
    values.map(lambda v: yaml.dump(v, Dumper=FAST_DUMPER)),                               # well-formed, wrong shape
    mutated_recipes(),                                                     # nearly right
    mutated_recipes().map(lambda t: t[: len(t) // 2]),                     # cut short
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=yaml_text)
def test_loader_returns_recipe_or_raises_recipe_error(fuzz_dir: Path, text: str) -> None:
    path = fuzz_dir / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        assert str(exc).startswith(f"{path}: "), str(exc)
        assert len(str(exc)) < 2000
        return
    assert isinstance(recipe, Recipe)
    assert parse_recipe(dump_recipe(recipe), path=path) == recipe, "what loads also saves and reloads"


# ---- hostile recipe files (issue 12) ----

_MINIMAL = "schema_version: 1\nname: part\nsource: {type: camera, device: 0}\n"


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_device_or_fifo_as_recipe_is_refused_within_a_second(tmp_path: Path, kind: str) -> None:
    import time

    if kind == "device":
        path = Path("/dev/zero")
    else:
        path = tmp_path / "recipe.yaml"
        os.mkfifo(path)
    started = time.monotonic()
    with pytest.raises(RecipeError, match=rf"{path}: .*is a {'device' if kind == 'device' else 'FIFO'}, not a "
                                          "regular recipe file"):
        load_recipe(path)
    assert time.monotonic() - started < 1.0


def test_a_recipe_larger_than_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:
        handle.truncate(64 << 30)            # sparse: 64 GiB that would never fit in memory
    with pytest.raises(RecipeError, match=r"huge\.yaml: is larger than 1024 KiB"):
        load_recipe(path)


def test_duplicate_keys_are_refused_naming_the_key_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(_MINIMAL + "thresholds: {fail: 0.9}\nmin_defect_area_px: 4\nthresholds: {fail: 0.1}\n")
    with pytest.raises(RecipeError, match=r"dup\.yaml: .*line 6.*found the key 'thresholds' twice "
                                          r"\(first at line 4\)"):
        load_recipe(path)


@pytest.mark.parametrize("field", ["model.directory", "archive.directory"])
@pytest.mark.parametrize("where", ["/etc", "/", "../../../../../../../tmp/elsewhere"])
def test_folders_outside_the_allowed_ones_are_refused_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, where: str,
) -> None:
    monkeypatch.setenv("INSPECTOR_ALLOWED_DIRS", str(tmp_path / "allowed"))
    section, key = field.split(".")
    path = tmp_path / "allowed" / "part.yaml"
    path.parent.mkdir()
    path.write_text(_MINIMAL + f"{section}: {{{key}: {where}}}\n")
    with pytest.raises(RecipeError, match=rf"part\.yaml: {field} .* is outside the folders the station may "
                                          "write in") as caught:
        load_recipe(path)
    assert caught.value.field == field


def test_a_link_out_of_an_allowed_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "models").symlink_to("/etc")
    monkeypatch.setenv("INSPECTOR_ALLOWED_DIRS", str(allowed))
    path = allowed / "part.yaml"
    path.write_text(_MINIMAL + "model: {directory: models}\n")
    with pytest.raises(RecipeError, match="model.directory"):
        load_recipe(path)
    path.write_text(_MINIMAL + "model: {directory: models_ok}\n")
    assert load_recipe(path).model_dir() == allowed / "models_ok"


@pytest.mark.parametrize("text", [".nan", ".inf", "1.0e+300", "2.5"])     # above 2: no score reaches it
def test_non_finite_thresholds_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "part.yaml"
    path.write_text(_MINIMAL + f"thresholds: {{fail: {text}}}\n")
    with pytest.raises(RecipeError, match="thresholds.fail must be a finite number"):
        load_recipe(path)


def test_edit_recipe_file_keeps_comments_and_mode_and_replaces_a_block_roi(tmp_path: Path) -> None:
    import os
    import stat

    from inspector.recipe import edit_recipe_file

    source = tmp_path / "a.yaml"
    source.write_text("# the engineer's notes\nname: a   # station name\nsource: {type: camera, device: 0}\n"
                      "roi:\n  rect: [0, 0, 10, 10]\n"
                      "min_defect_area_px: 5   # measured on the line\n", encoding="utf-8")
    os.chmod(source, 0o640)
    saved = edit_recipe_file(source, tmp_path / "b.yaml", name="b", roi=(1, 2, 3, 4))
    text = (tmp_path / "b.yaml").read_text(encoding="utf-8")
    assert saved.name == "b" and saved.roi is not None and saved.roi.rect == (1, 2, 3, 4)
    assert "# the engineer's notes" in text and "# station name" in text and "# measured on the line" in text
    assert "rect: [0, 0, 10, 10]" not in text
    assert stat.S_IMODE((tmp_path / "b.yaml").stat().st_mode) == 0o640
    with pytest.raises(RecipeError, match="b.yaml"):
        edit_recipe_file(source, tmp_path / "b.yaml", name="B C/../x")     # invalid: nothing written
    assert load_recipe(tmp_path / "b.yaml").name == "b"


def test_a_new_recipe_from_another_takes_its_settings_not_its_models(tmp_path: Path) -> None:
    from inspector.recipe import ArchiveSettings, ModelSettings, Thresholds, edit_recipe_file, new_recipe_from

    source = tmp_path / "a.yaml"
    source.write_text("# Bracket A under the ring light\n\n"
                      "name: a\nproduct: Bracket A (part 4711-200)   # for the operator\n"
                      "source: {type: camera, device: 0}\nroi: {rect: [0, 0, 10, 10]}\n"
                      "model: {directory: models/a, version: v2}   # pinned after the v3 trial\n"
                      "thresholds: {review: 0.3, fail: 0.6}   # set by hand on a's scores\n"
                      "archive: {enabled: true, directory: archive/a, save_pass_every: 100}\n"
                      "min_defect_area_px: 7   # measured on the line\n", encoding="utf-8")
    a = load_recipe(source)
    made = new_recipe_from(a, "b", tmp_path / "b.yaml")
    assert (made.name, made.roi, made.model, made.thresholds) == ("b", None, ModelSettings(), Thresholds())
    assert made.product == "", "the kiosk would show the other product's name and part number"
    assert made.archive == ArchiveSettings(enabled=True, directory=None, save_pass_every=100)
    assert made.min_defect_area_px == 7 and made.source == a.source
    written = edit_recipe_file(source, tmp_path / "b.yaml", name="b", roi=None, new=True)
    assert written == made
    text = (tmp_path / "b.yaml").read_text(encoding="utf-8")
    assert "pinned after" not in text and "set by hand" not in text and "# measured on the line" in text
    assert "4711-200" not in text and "for the operator" not in text and "ring light" not in text
    assert text.startswith("# Made from a.yaml")
    assert load_recipe(source) == a, "the source is not touched"
    same = tmp_path / "c.yaml"                          # nothing to reset: those lines are kept as written
    same.write_text("name: c\nsource: {type: camera, device: 0}\nmodel: {directory: null}   # the default\n",
                    encoding="utf-8")
    edit_recipe_file(same, tmp_path / "d.yaml", name="d", new=True)
    assert "model: {directory: null}   # the default" in (tmp_path / "d.yaml").read_text(encoding="utf-8")
