"""ONNX export and the onnxruntime runtime: parity with torch in a real CPU session, names, errors.

A small random-init ViT-S/14 (timm, no weights) is fitted on a few seeded noise frames at
shorter_side 56 (4 x 6 patches); exports are written once per module to keep the run short.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import models.detectors._whitening as whitening_module
from models.backbone import DinoBackbone, create_backbone
from models.detectors import PatchKNN, PatchKNNConfig
from models.export import ExportReport, describe_path, export_onnx, read_description
from models.runtime import OrtDetector, select_providers

SIDE = 56  # shorter side of the model input: 4 patches
INPUT_HW = (56, 84)  # model input of a 2:3 frame: 4 x 6 patches


def good_frame(rng: np.random.Generator, height: int = 56, width: int = 84) -> np.ndarray:
    """A flat grey part with fine noise: (height, width, 3) uint8 RGB."""
    noise = rng.normal(0.0, 12.0, (height, width, 1))
    return np.clip(128.0 + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)


def defect_frame(rng: np.random.Generator, height: int = 56, width: int = 84) -> np.ndarray:
    """A good frame with a green blob drawn near its centre."""
    frame = good_frame(rng, height, width)
    cv2.circle(frame, (width // 2, height // 2), max(height // 8, 3), (20, 200, 40), thickness=-1)
    return frame


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(8,), device="cpu")


def _fitted(backbone: DinoBackbone, masking: str, *, second_scale: int = 0, brightness: str = "as_is") -> PatchKNN:
    """Fitted on 3 good frames; without the second scale unless asked (the detector graph is the fine scale)."""
    rng = np.random.default_rng(0)
    config = PatchKNNConfig(shorter_side=SIDE, masking=masking, second_scale=second_scale,  # type: ignore[arg-type]
                            brightness=brightness)  # type: ignore[arg-type]
    detector = PatchKNN(backbone=backbone, config=config)
    detector.fit([good_frame(rng) for _ in range(3)])
    return detector


@pytest.fixture(scope="module")
def detector(backbone: DinoBackbone) -> PatchKNN:
    return _fitted(backbone, "off")


@pytest.fixture(scope="module")
def exported(detector: PatchKNN, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    rng = np.random.default_rng(1)
    out = tmp_path_factory.mktemp("onnx") / "v1" / "model.onnx"
    return export_onnx(detector, out, input_hw=INPUT_HW, verify_images=[good_frame(rng), defect_frame(rng)])


@pytest.fixture(scope="module")
def runtime(exported: ExportReport) -> OrtDetector:
    return OrtDetector(exported.path, device="cpu")


# --------------------------------------------------------------------------------- detector graph


def test_export_writes_a_verified_detector_graph(exported: ExportReport) -> None:
    assert exported.graph == "detector"
    assert exported.path.is_file() and exported.file_bytes > 0
    assert exported.score_max_abs_diff <= exported.score_atol, exported.summary_lines()
    assert exported.map_max_abs_diff <= exported.map_atol, exported.summary_lines()
    assert exported.provider == "CPUExecutionProvider"
    text = "\n".join(exported.summary_lines())
    assert "max |score diff|" in text and "max |map diff|" in text


def test_graph_inputs_and_outputs_are_named_after_the_result_fields(exported: ExportReport) -> None:
    model = onnx.load(str(exported.path))
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["pred_score", "anomaly_map"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch", "the batch axis must be dynamic"
    ops = {node.op_type for node in model.graph.node}
    assert "MatMul" in ops and ("ReduceMax" in ops or "TopK" in ops), sorted(ops)


def test_description_beside_the_file(exported: ExportReport) -> None:
    json_path = describe_path(exported.path)
    assert json_path.name == "model.onnx.json"  # never model.json: that is the saved detector's manifest
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data == read_description(exported.path)
    assert data["graph"] == "detector"
    assert data["input_hw"] == list(INPUT_HW)
    assert [o["name"] for o in data["outputs"]] == ["pred_score", "anomaly_map"]
    assert data["tolerances"] == {"score_atol": exported.score_atol, "map_atol": exported.map_atol}
    assert data["verification"]["passed"] is True
    assert data["verification"]["frames"] == 2
    assert "weights_sha256" in data  # None here: a random-init backbone


def test_runtime_matches_torch_on_frames_of_another_size(detector: PatchKNN, runtime: OrtDetector) -> None:
    """70x105 frames are resized to 56x84: exercises the preprocessing and the map's way back."""
    rng = np.random.default_rng(2)
    frames = [good_frame(rng, 70, 105), defect_frame(rng, 70, 105), good_frame(rng, 70, 105)]
    expected = detector.predict(frames)
    got = runtime.predict(frames)
    assert got.pred_score.shape == (3,) and got.pred_score.dtype == np.float32
    assert got.anomaly_map.shape == (3, 70, 105) and got.anomaly_map.dtype == np.float32
    np.testing.assert_allclose(got.pred_score, expected.pred_score, atol=1e-4)
    np.testing.assert_allclose(got.anomaly_map, expected.anomaly_map, atol=1e-4)
    assert got.pred_score[1] > got.pred_score[0], "the blob frame must score higher than a good one"


def test_runtime_batches_dynamically(runtime: OrtDetector) -> None:
    rng = np.random.default_rng(3)
    batch = np.stack([good_frame(rng) for _ in range(5)])
    whole = runtime.predict(batch, batch_size=5)
    one_by_one = [runtime.predict(frame).pred_score[0] for frame in batch]
    np.testing.assert_allclose(whole.pred_score, one_by_one, atol=1e-5)
    assert runtime.provider == "CPUExecutionProvider"


def test_runtime_refuses_a_frame_of_another_input_size(runtime: OrtDetector) -> None:
    frame = good_frame(np.random.default_rng(4), 56, 56)
    with pytest.raises(ValueError, match="exported for 56x84"):
        runtime.predict(frame)


# --------------------------------------------------------------------------------- backbone graph


def test_masking_detector_exports_the_backbone_and_scores_in_torch(
    backbone: DinoBackbone, tmp_path: Path
) -> None:
    detector = _fitted(backbone, "on")
    report = export_onnx(detector, tmp_path / "model.onnx", input_hw=INPUT_HW)
    assert report.graph == "backbone"
    assert report.feature_max_abs_diff is not None and report.feature_max_abs_diff < 1e-2
    assert any("masks the background" in note for note in report.notes)
    model = onnx.load(str(report.path))
    assert [o.name for o in model.graph.output] == ["features"]

    with pytest.raises(ValueError, match="pass detector="):
        OrtDetector(report.path, device="cpu")
    runtime = OrtDetector(report.path, device="cpu", detector=detector)
    frames = [defect_frame(np.random.default_rng(5))]
    np.testing.assert_allclose(runtime.predict(frames).pred_score, detector.predict(frames).pred_score, atol=1e-4)
    with pytest.raises(ValueError, match="cannot express"):
        export_onnx(detector, tmp_path / "full.onnx", input_hw=INPUT_HW, graph="detector")


def test_a_second_scale_detector_exports_the_backbone_and_scores_both_scales_in_torch(
    backbone: DinoBackbone, tmp_path: Path
) -> None:
    detector = _fitted(backbone, "off", second_scale=5)
    assert detector.second_scale_active
    report = export_onnx(detector, tmp_path / "model.onnx", input_hw=INPUT_HW)
    assert report.graph == "backbone"
    assert any("second, coarser scale" in note for note in report.notes)
    runtime = OrtDetector(report.path, device="cpu", detector=detector)
    frames = [defect_frame(np.random.default_rng(5)), good_frame(np.random.default_rng(6))]
    np.testing.assert_allclose(runtime.predict(frames).pred_score, detector.predict(frames).pred_score, atol=1e-4)
    with pytest.raises(ValueError, match="second_scale=0"):
        export_onnx(detector, tmp_path / "full.onnx", input_hw=INPUT_HW, graph="detector")


def test_a_brightness_standardising_detector_graph_standardises_in_the_runtime_too(
    backbone: DinoBackbone, tmp_path: Path
) -> None:
    detector = _fitted(backbone, "off", brightness="standardise")
    rng = np.random.default_rng(3)
    report = export_onnx(detector, tmp_path / "model.onnx", input_hw=INPUT_HW,
                         verify_images=[good_frame(rng), defect_frame(rng)])
    assert report.graph == "detector"
    assert read_description(report.path)["preprocess"]["brightness"] == "standardise"
    runtime = OrtDetector(report.path, device="cpu")
    darker = (good_frame(np.random.default_rng(7)) * 0.5).astype(np.uint8)   # lit at half: standardised alike
    frames = [darker, defect_frame(np.random.default_rng(8))]
    np.testing.assert_allclose(runtime.predict(frames).pred_score, detector.predict(frames).pred_score, atol=1e-4)


def _graph_carries(backbone: DinoBackbone, tmp_path: Path, drop: Callable[[PatchKNN], None], **options: bool) -> None:
    """A detector fitted with ``options`` exports a detector graph whose scores match torch's; ``drop`` removes
    what the option fitted, and the scores then differ (so the graph carries it)."""
    rng = np.random.default_rng(0)
    config = PatchKNNConfig(shorter_side=SIDE, masking="off", second_scale=0, brightness="as_is", **options)
    detector = PatchKNN(backbone=backbone, config=config)
    detector.fit([good_frame(rng) for _ in range(3)])
    report = export_onnx(detector, tmp_path / "model.onnx", input_hw=INPUT_HW,
                         verify_images=[good_frame(rng), defect_frame(rng)])
    assert report.graph == "detector"
    frames = [good_frame(np.random.default_rng(7)), defect_frame(np.random.default_rng(8))]
    expected = detector.predict(frames).pred_score
    np.testing.assert_allclose(OrtDetector(report.path, device="cpu").predict(frames).pred_score, expected, atol=1e-4)
    drop(detector)
    assert np.abs(detector.predict(frames).pred_score - expected).max() > 1e-3


def test_a_whitened_detector_graph_carries_the_good_patches_map(
    backbone: DinoBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(whitening_module, "MIN_ROWS_PER_DIM", 0)    # three small frames: too few patches otherwise

    def drop(detector: PatchKNN) -> None:
        assert detector.core.whitening.active
        detector.core.whitening.clear()

    _graph_carries(backbone, tmp_path, drop, whitening=True)


def test_a_detector_graph_carries_the_bank_spread_units(backbone: DinoBackbone, tmp_path: Path) -> None:
    def drop(detector: PatchKNN) -> None:
        assert detector.spread.active
        detector.spread.scale = None

    _graph_carries(backbone, tmp_path, drop, bank_spread=True)


# --------------------------------------------------------------------------------- self-check and errors


def test_export_raises_with_the_numbers_when_onnxruntime_disagrees(
    detector: PatchKNN, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the torch side's scores are shifted, as a wrong graph would make them differ."""
    real_predict = detector.predict

    def shifted(images: object, **kw: object) -> object:
        out = real_predict(images, **kw)  # type: ignore[arg-type]
        return out._replace(pred_score=out.pred_score + 0.5)

    monkeypatch.setattr(detector, "predict", shifted)
    with pytest.raises(RuntimeError, match=r"max \|score diff\| 0\.5.*tolerance 0\.001"):
        export_onnx(detector, tmp_path / "model.onnx", input_hw=INPUT_HW)
    data = read_description(tmp_path / "model.onnx")
    assert data["verification"]["passed"] is False


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_hw": (50, 84)}, "multiples of the 14-px patch size"),
        ({"graph": "full"}, "graph must be"),
        ({"verify_images": [np.zeros((56, 56, 3), np.uint8)]}, "not the exported 56x84"),
    ],
)
def test_export_argument_errors(detector: PatchKNN, tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"input_hw": INPUT_HW, **kwargs}
    with pytest.raises(ValueError, match=match):
        export_onnx(detector, tmp_path / "model.onnx", **args)


def test_export_refuses_an_unfitted_detector(backbone: DinoBackbone, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unfitted detector: call fit"):
        export_onnx(PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=SIDE)), tmp_path / "m.onnx")


def test_runtime_names_a_missing_description(exported: ExportReport, tmp_path: Path) -> None:
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(exported.path.read_bytes())
    with pytest.raises(FileNotFoundError, match="lone.onnx.json not found; export the model again"):
        OrtDetector(lone, device="cpu")


# --------------------------------------------------------------------------------- providers


def test_provider_choice_falls_back_to_the_cpu() -> None:
    assert select_providers("cpu") == ["CPUExecutionProvider"]
    auto = select_providers("auto", tensorrt=True)
    assert auto[-1] == "CPUExecutionProvider"
    if not torch.cuda.is_available():
        assert auto == ["CPUExecutionProvider"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda_raises() -> None:
    with pytest.raises(RuntimeError, match="device 'cuda' was asked for"):
        select_providers("cuda")


def test_unknown_device_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="use one of: auto, cpu, cuda"):
        select_providers("gpu")


# --------------------------------------------------------------------------------- recipe switch


@pytest.mark.parametrize(("runtime", "ok"), [("torch", True), ("onnx", True), ("tensorrt", False)])
def test_recipe_detector_runtime_is_torch_or_onnx(runtime: str, ok: bool) -> None:
    from inspector.errors import RecipeError
    from inspector.recipe import parse_recipe

    text = f"schema_version: 1\nname: part_a\nsource: {{type: camera}}\ndetector: {{runtime: {runtime}}}\n"
    if ok:
        assert parse_recipe(text).detector.runtime == runtime
    else:
        with pytest.raises(RecipeError, match="detector.runtime.*'torch' or 'onnx'"):
            parse_recipe(text)


def test_loading_onnxruntime_through_models_writes_nothing_under_home(tmp_path: Path) -> None:
    """onnxruntime's telemetry would write ~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path)
    code = "import models.runtime, onnxruntime; onnxruntime.get_available_providers()"
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=True, timeout=120)
    assert list(tmp_path.rglob("*")) == []


def test_parity_check_of_onnxruntime_with_torch(detector: PatchKNN, runtime: OrtDetector) -> None:
    from models.runtime import check_parity

    rng = np.random.default_rng(21)
    frames = [good_frame(rng) for _ in range(4)] + [defect_frame(rng) for _ in range(4)]
    scores = detector.predict(frames).pred_score
    threshold = float((scores[:4].max() + scores[4:].min()) / 2)
    parity = check_parity(detector, runtime, frames, threshold=threshold)
    assert parity.ok, parity.line()
    assert parity.frames == 8 and parity.verdicts_equal and parity.correlation >= 0.9999

    class Shifted:  # a runtime that moves one score across the threshold: no parity
        def predict(self, images: list[np.ndarray], *, batch_size: int = 8) -> object:
            out = detector.predict(images, batch_size=batch_size)
            out.pred_score[0] = threshold + 1.0
            return out

    broken = check_parity(detector, Shifted(), frames, threshold=threshold)
    assert not broken.ok and not broken.verdicts_equal and "NO PARITY" in broken.line()


def test_an_export_changed_after_it_was_written_is_refused(exported: ExportReport, tmp_path: Path) -> None:
    import shutil

    from models.onnx_contract import describe_path

    copy = tmp_path / "model.onnx"
    shutil.copy(exported.path, copy)
    shutil.copy(describe_path(exported.path), describe_path(copy))
    OrtDetector(copy, device="cpu")                       # as exported: loads
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF                          # one byte of the graph or its weights changed
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.onnx was changed after it was exported .*model\.onnx\.json"):
        OrtDetector(copy, device="cpu")
