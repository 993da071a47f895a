"""PatchKNNCore: the one scoring definition that PatchKNN.predict runs and models.export traces; the
public frame geometry of models.preprocess; no import cycle inside models/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbone import DinoBackbone, create_backbone
from models.detectors import PatchKNN, PatchKNNConfig
from models.detectors.patch_knn_core import CoreScores, PatchKNNCore
from models.export import export_onnx
from models.preprocess import anomaly_maps, frame_geometry, standardise_brightness, to_model_input, uncrop_maps

REPO = Path(__file__).resolve().parents[2]
SIDE = 56


def frame(rng: np.random.Generator, hw: tuple[int, int] = (56, 84)) -> np.ndarray:
    return rng.integers(0, 256, (*hw, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")


def _fitted(backbone: DinoBackbone, **options: object) -> PatchKNN:
    rng = np.random.default_rng(0)
    # the core is the fine scale alone: no second scale (models.detectors._scales) on top
    options = {"second_scale": 0, **options}
    config = PatchKNNConfig(shorter_side=SIDE, masking="off", augment_rotations=False, **options)  # type: ignore[arg-type]
    detector = PatchKNN(backbone=backbone, config=config)
    detector.fit([frame(rng) for _ in range(3)])
    return detector


def test_predict_is_the_core_plus_the_frame_geometry(backbone: DinoBackbone) -> None:
    detector = _fitted(backbone, k=2, patch_pooling=3)
    frames = [frame(np.random.default_rng(5), (70, 120)) for _ in range(2)]
    with torch.inference_mode():
        x = to_model_input(np.stack([standardise_brightness(f) for f in frames]), shorter_side=SIDE)  # the default
        scores = detector.core(x, detector.memory_bank)
    assert isinstance(scores, CoreScores) and isinstance(detector.core, PatchKNNCore)
    assert scores.anomaly_map.shape == (2, *x.shape[-2:])
    geo = frame_geometry(70, 120, shorter_side=SIDE)
    detection = detector.predict(frames)
    np.testing.assert_array_equal(detection.pred_score, scores.pred_score.numpy())
    np.testing.assert_array_equal(detection.anomaly_map, uncrop_maps(scores.anomaly_map[:, None], geo).numpy())


def test_the_core_takes_any_memory_bank(backbone: DinoBackbone) -> None:
    """A frame scored against a bank holding its own patches is normal everywhere."""
    detector = _fitted(backbone)
    image = frame(np.random.default_rng(9))
    with torch.inference_mode():
        x = to_model_input(image, shorter_side=SIDE)
        own = detector.core.embed(detector.core.extract(x)).reshape(-1, detector.backbone.feature_dim)
        scores = detector.core(x, own)
        other = detector.core(x, detector.memory_bank)
    assert float(scores.pred_score[0]) == pytest.approx(0.0, abs=1e-5)
    assert float(other.pred_score[0]) > 0.01


@pytest.mark.parametrize(("k", "pooling"), [(1, 1), (3, 3)])
def test_export_traces_the_core_and_matches_torch(backbone: DinoBackbone, tmp_path: Path, k: int,
                                                  pooling: int) -> None:
    """k > 1 and PatchCore pooling export too: the graph is the core, not a copy that skipped the pooling."""
    detector = _fitted(backbone, k=k, patch_pooling=pooling)
    rng = np.random.default_rng(3)
    report = export_onnx(detector, tmp_path / "model.onnx", input_hw=(56, 84), chunk_rows=100,
                         verify_images=[frame(rng), frame(rng)])
    assert report.score_max_abs_diff < 1e-4 and report.map_max_abs_diff < 1e-4, report.summary_lines()


def test_anomaly_maps_is_crop_then_uncrop() -> None:
    rng = np.random.default_rng(0)
    patch_scores = torch.from_numpy(rng.random((2, 4, 6), dtype=np.float32))
    geo = frame_geometry(75, 120, shorter_side=SIDE)
    assert geo.frame == (75, 120) and geo.crop == (56, 84) and geo.resized == (56, 90) and geo.offset == (0, 3)
    full = anomaly_maps(patch_scores, geo, sigma=4.0, full_size=True)
    resized = anomaly_maps(patch_scores, geo, sigma=4.0, full_size=False)
    assert full.shape == (2, 75, 120) and resized.shape == (2, 56, 90)
    # the cropped-off columns repeat the crop's edge
    torch.testing.assert_close(resized[:, :, 0], resized[:, :, 3])
    torch.testing.assert_close(resized[:, :, -1], resized[:, :, -4])


def _imports(path: Path) -> set[str]:
    """Modules of models/ that ``path`` imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("models"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("models"))
    return names


def test_no_import_cycle_inside_models() -> None:
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts): p for p in (REPO / "models").rglob("*.py")}
    modules = {name.removesuffix(".__init__"): path for name, path in modules.items()}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    # a package's __init__ re-exports its modules; a module importing its own package is not a cycle
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep):], dep]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert graph["models.export"] >= {"models.runtime", "models.onnx_contract"}
    assert "models.export" not in graph["models.runtime"]


def test_the_runtime_loads_without_the_exporter() -> None:
    code = "import sys, models.runtime; print('models.export' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=True)
    assert run.stdout.strip() == "False"
