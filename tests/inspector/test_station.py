"""Station: a taught recipe turns frames into verdicts, regions and maps; versions and ROI behave."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from inspector.errors import ModelError, WeightsNotFound
from inspector.recipe import Roi, load_recipe
from inspector.results import Frame, Verdict
from inspector.station import (
    Station,
    _gpu_warning,
    apply_roi,
    line_thresholds,
    next_version,
    nvidia_gpu_installed,
    resolve_version,
)
from tests.helpers.images import textured_part, with_defect


@pytest.fixture
def station(taught_recipe: Path) -> Station:
    return Station.load(load_recipe(taught_recipe))


def test_good_part_passes_and_defect_fails_with_region_on_the_defect(station: Station) -> None:
    rng = np.random.default_rng(7)
    good = textured_part(rng)
    bad, mask = with_defect(textured_part(rng), rng)

    passed = station.inspect_image(good)
    failed = station.inspect_image(bad, path="bad.png")

    assert passed.verdict is Verdict.PASS and passed.regions == ()
    assert failed.verdict is Verdict.FAIL
    assert failed.score > passed.score
    assert failed.anomaly_map.shape == bad.shape[:2] and failed.anomaly_map.dtype == np.float32
    peak = np.unravel_index(np.argmax(failed.anomaly_map), mask.shape)
    assert mask[peak], "the heatmap peak must fall inside the drawn defect"
    assert failed.regions and failed.regions[0].area_px >= 4
    r = failed.regions[0]
    assert r.x <= peak[1] < r.x + r.width and r.y <= peak[0] < r.y + r.height
    assert failed.recipe == "tiny_part" and failed.model_version == "v1" and failed.path == "bad.png"
    assert failed.line == "L1" and failed.station == "S1"
    assert failed.times.model_ms > 0


def test_inspect_takes_pipeline_frames(station: Station) -> None:
    image = textured_part(np.random.default_rng(1))
    frame = Frame(image_bgr=image, frame_id=41, timestamp=123.0, source="cam", capture_ms=2.5)
    result = station.inspect(frame)
    assert (result.frame_id, result.timestamp, result.source) == (41, 123.0, "cam")
    assert result.times.capture_ms == 2.5


def test_recipe_thresholds_override_the_calibrated_ones(taught_recipe: Path) -> None:
    recipe = load_recipe(taught_recipe)
    strict = dataclasses.replace(recipe, thresholds=dataclasses.replace(recipe.thresholds, review=0.0, fail=0.0))
    result = Station.load(strict).inspect_image(textured_part(np.random.default_rng(3)))
    assert result.verdict is Verdict.FAIL
    lenient = dataclasses.replace(recipe, thresholds=dataclasses.replace(recipe.thresholds, review=1e6, fail=1e6))
    bad, _ = with_defect(textured_part(np.random.default_rng(3)), np.random.default_rng(3))
    assert Station.load(lenient).inspect_image(bad).verdict is Verdict.PASS


def _two_marks(station: Station) -> tuple[np.ndarray, np.ndarray, float]:
    """A frame with the drawn defect and a fainter mark on the background, its defect mask, and a pixel threshold
    low enough for the mark to be a region of its own."""
    rng = np.random.default_rng(11)
    bad, mask = with_defect(textured_part(rng), rng)
    cv2.rectangle(bad, (6, 6), (15, 15), (120, 120, 120), thickness=-1)
    return bad, mask, float(np.quantile(station.inspect_image(bad).anomaly_map, 0.9))


def test_regions_below_the_region_peak_are_not_shown_but_the_strongest_is(station: Station) -> None:
    """Hysteresis: the pixel threshold gives a region its extent, the model's region peak decides which are shown."""
    bad, mask, low = _two_marks(station)
    taught = station.model_thresholds
    assert taught.region_peak is not None and taught.region_peak >= taught.pixel   # calibrated when taught

    def shown(region_peak: float | None) -> list[tuple[int, int, int, int, float]]:
        station.model_thresholds = dataclasses.replace(taught, pixel=low, region_peak=region_peak)
        return [(r.x, r.y, r.width, r.height, r.max_score) for r in station.inspect_image(bad).regions]

    every = shown(None)
    assert len(every) == 2, every
    (x, y, w, h, strong), (*_, faint) = every
    assert mask[y : y + h, x : x + w].any() and not mask[:16, :16].any() and faint < strong
    assert shown((faint + strong) / 2) == every[:1], "the mark's peak is below the region peak"
    assert shown(faint) == every, "a region whose peak reaches the region peak is shown"
    assert shown(2 * strong) == every[:1], "nothing reaches it: the strongest region still shows why"


def test_a_recipe_sets_its_own_region_peak_and_0_shows_every_region(taught_recipe: Path) -> None:
    recipe = load_recipe(taught_recipe)
    station = Station.load(recipe)
    bad, _, low = _two_marks(station)
    station.model_thresholds = dataclasses.replace(station.model_thresholds, pixel=low, region_peak=10.0)
    assert len(station.inspect_image(bad).regions) == 1           # the model's peak: the strongest only
    for peak, shown in ((0.0, 2), (5.0, 1)):
        station.recipe = dataclasses.replace(recipe, thresholds=dataclasses.replace(recipe.thresholds,
                                                                                    region_peak=peak))
        assert station.region_peak == peak
        assert len(station.inspect_image(bad).regions) == shown


def test_the_typer_describes_the_frame_by_every_region_also_those_not_shown(station: Station, tmp_path: Path) -> None:
    from inspector.defect_typing import DefectTyper
    from inspector.store import Store

    bad, _, low = _two_marks(station)
    taught = station.model_thresholds
    with Store(tmp_path / "stats.db") as store:
        station.attach_typer(DefectTyper(store, station.name, refresh_s=0.0))     # scope "frame", the default
        station.model_thresholds = dataclasses.replace(taught, pixel=low, region_peak=None)
        every = station.inspect_image(bad).regions
        station.model_thresholds = dataclasses.replace(taught, pixel=low, region_peak=every[0].max_score)
        shown = station.inspect_image(bad).regions
    assert (len(every), len(shown)) == (2, 1)
    assert shown[0].embedding is not None
    np.testing.assert_array_equal(shown[0].embedding, every[0].embedding)   # the mark is in its description


def test_line_thresholds_read_from_a_saved_version_are_the_stations(taught_recipe: Path) -> None:
    """What the Statistics screen draws for a recipe picked while stopped: no detector loaded, the same numbers."""
    recipe = load_recipe(taught_recipe)
    folder = resolve_version(recipe).path
    assert line_thresholds(recipe, folder) == Station.load(recipe).thresholds
    review_only = dataclasses.replace(recipe, thresholds=dataclasses.replace(recipe.thresholds, review=0.01))
    review, fail, pixel = line_thresholds(review_only, folder)
    assert review == 0.01 and (fail, pixel) == Station.load(recipe).thresholds[1:]
    (folder / "model.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="model.json"):
        line_thresholds(recipe, folder)


def test_roi_rect_maps_regions_back_to_frame_coordinates(taught_recipe: Path) -> None:
    recipe = load_recipe(taught_recipe)
    rng = np.random.default_rng(5)
    bad, mask = with_defect(textured_part(rng), rng)
    frame = np.zeros((140, 200, 3), np.uint8)
    frame[30:114, 50:134] = bad
    roi = dataclasses.replace(recipe, roi=Roi(rect=(50, 30, 84, 84)))
    result = Station.load(roi).inspect_image(frame)
    assert result.anomaly_map.shape == (140, 200)
    assert float(result.anomaly_map[:30].max()) == 0.0, "outside the ROI the map is zero"
    peak = np.unravel_index(np.argmax(result.anomaly_map), result.anomaly_map.shape)
    assert mask[peak[0] - 30, peak[1] - 50]
    assert all(r.x >= 50 and r.y >= 30 for r in result.regions)


def test_polygon_roi_zeroes_the_map_outside_the_polygon() -> None:
    frame = np.full((100, 100, 3), 128, np.uint8)
    crop, offset, mask = apply_roi(frame, Roi(polygon=((10, 10), (90, 10), (10, 90))))
    assert offset == (10, 10) and crop.shape[:2] == mask.shape
    assert mask[5, 5] and not mask[-5, -5]


def test_roi_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="less than 14x14"):
        apply_roi(np.zeros((50, 50, 3), np.uint8), Roi(rect=(45, 45, 20, 20)))


def test_versions_newest_pinned_and_missing(taught_recipe: Path) -> None:
    recipe = load_recipe(taught_recipe)
    assert resolve_version(recipe).name == "v1"
    assert next_version(recipe).name == "v2"
    pinned = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, version="v7"))
    with pytest.raises(ModelError, match="v7"):
        Station.load(pinned)


def test_untaught_recipe_says_how_to_teach(tmp_path: Path, tiny_weights_file: Path) -> None:
    from tests.conftest import write_recipe

    recipe = load_recipe(write_recipe(tmp_path, tiny_weights_file))
    with pytest.raises(ModelError, match="inspector train"):
        Station.load(recipe)


def test_model_made_with_other_weights_is_refused(taught_recipe: Path, tmp_path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True)
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(other))
    with pytest.raises(ModelError, match="sha256"):
        Station.load(load_recipe(taught_recipe), weights=other)


def test_missing_weights_file_names_it(taught_recipe: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(WeightsNotFound, match="nowhere.safetensors"):
        Station.load(load_recipe(taught_recipe), weights=missing)


def test_corrupt_model_file_names_it(taught_recipe: Path) -> None:
    recipe = load_recipe(taught_recipe)
    tensors = resolve_version(recipe).path / "model.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:1000])
    with pytest.raises(ModelError, match="model.safetensors"):
        Station.load(recipe)


# ---- fail-safe verdicts: a broken number is an ERROR (a reject), never a PASS (issue 12) ----


def test_non_finite_threshold_gives_error_not_pass(station: Station) -> None:
    calibrated = station.model_thresholds
    for field, bad in (("review", float("nan")), ("fail", float("inf")), ("fail", float("nan")),
                       ("pixel", float("-inf"))):
        station.model_thresholds = dataclasses.replace(calibrated, **{field: bad})
        result = station.inspect_image(textured_part(np.random.default_rng(7)))
        assert result.verdict is Verdict.ERROR and result.score is None, (field, bad)
        assert result.error is not None and f"{field} threshold" in result.error


@pytest.mark.parametrize("where", ["score", "map"])
def test_non_finite_score_or_map_gives_error_not_pass(
    station: Station, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    real_predict = station.detector.predict

    def broken(image_rgb: np.ndarray, **options: object) -> object:
        detection = real_predict(image_rgb, **options)
        if where == "score":
            detection.pred_score[0] = np.nan
        else:
            detection.anomaly_map[0][3, 3] = np.inf
        return detection

    monkeypatch.setattr(station.detector, "predict", broken)
    rng = np.random.default_rng(7)
    for image in (textured_part(rng), with_defect(textured_part(rng), rng)[0]):
        result = station.inspect_image(image)
        assert result.verdict is Verdict.ERROR and result.score is None
        assert result.error is not None and ("score nan" in result.error or "anomaly map" in result.error)


def test_inspect_images_batches_frames_of_two_sizes_like_one_at_a_time(station: Station) -> None:
    rng = np.random.default_rng(11)
    small = [textured_part(rng), with_defect(textured_part(rng), rng)[0], textured_part(rng)]
    large = [textured_part(rng, 126), with_defect(textured_part(rng, 126), rng)[0]]
    images = [small[0], large[0], small[1], large[1], small[2]]      # sizes interleaved
    paths = [f"img_{i}.png" for i in range(len(images))]

    batched = station.inspect_images(images, paths=paths, first_frame_id=10, batch_size=2)
    single = [station.inspect_image(image, path=path) for image, path in zip(images, paths, strict=True)]

    assert [r.path for r in batched] == paths and [r.frame_id for r in batched] == [10, 11, 12, 13, 14]
    for b, s in zip(batched, single, strict=True):
        assert b.verdict is s.verdict
        assert b.score == pytest.approx(s.score, abs=1e-5)
        assert b.anomaly_map.shape == s.anomaly_map.shape
        np.testing.assert_allclose(b.anomaly_map, s.anomaly_map, atol=1e-4)
        assert [(r.x, r.y) for r in b.regions] == [(r.x, r.y) for r in s.regions]
    assert batched[2].verdict is Verdict.FAIL and batched[0].verdict is Verdict.PASS


def test_threads_inspecting_at_once_on_the_cpu_get_what_one_thread_gets(station: Station) -> None:
    """A station on the CPU lets callers score at once (a review's scoring threads): same results."""
    from concurrent.futures import ThreadPoolExecutor

    assert station.concurrent_calls, "a CPU station takes callers at once"
    rng = np.random.default_rng(12)
    images = [textured_part(rng) if i % 3 else with_defect(textured_part(rng), rng)[0] for i in range(8)]
    alone = [station.inspect_image(image) for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(station.inspect_image, images))
    for a, b in zip(alone, together, strict=True):
        assert a.verdict is b.verdict and a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)
    assert {Verdict.PASS, Verdict.FAIL} <= {r.verdict for r in together}, "good and defective parts both seen"


def test_inspect_images_refuses_paths_that_do_not_match(station: Station) -> None:
    image = textured_part(np.random.default_rng(2))
    with pytest.raises(ValueError, match="2 paths for 1 images"):
        station.inspect_images([image], paths=["a.png", "b.png"])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        station.inspect_images([image], batch_size=0)


def _pci_tree(root: Path, devices: dict[str, tuple[str, str]]) -> Path:
    """A folder laid out as Linux's /sys/bus/pci/devices: one folder per device, its vendor and class."""
    for name, (vendor, klass) in devices.items():
        (root / name).mkdir(parents=True)
        (root / name / "vendor").write_text(vendor + "\n", encoding="ascii")
        (root / name / "class").write_text(klass + "\n", encoding="ascii")
    return root


def test_nvidia_gpu_is_found_by_its_pci_vendor_and_display_class(tmp_path: Path) -> None:
    bridge, disk = ("0x8086", "0x060000"), ("0x1af4", "0x010000")
    virtio_only = _pci_tree(tmp_path / "a", {"0000:00:01.0": disk, "0000:00:00.0": bridge})
    with_gpu = _pci_tree(tmp_path / "b", {"0000:00:01.0": bridge, "0000:41:00.0": ("0x10de", "0x030200")})
    nvidia_audio = _pci_tree(tmp_path / "c", {"0000:41:00.1": ("0x10de", "0x040300")})   # a GPU's HDMI audio part

    assert nvidia_gpu_installed(virtio_only) is False
    assert nvidia_gpu_installed(with_gpu) is True
    assert nvidia_gpu_installed(nvidia_audio) is False
    assert nvidia_gpu_installed(tmp_path / "no-such-listing") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warnings are for a machine where CUDA is unusable")
def test_device_auto_warns_only_where_a_gpu_is_installed_or_cannot_be_listed(tmp_path: Path) -> None:
    cpu_station = _pci_tree(tmp_path / "cpu", {"0000:00:01.0": ("0x1af4", "0x010000")})
    broken_gpu = _pci_tree(tmp_path / "gpu", {"0000:41:00.0": ("0x10de", "0x030000")})

    assert _gpu_warning(cpu_station) is None
    lost = _gpu_warning(broken_gpu)
    assert lost is not None and lost.startswith("GPU unavailable: running on CPU")
    assert ("driver" in lost) if torch.version.cuda else ("CPU-only build" in lost)
    assert _gpu_warning(tmp_path / "no-such-listing") == "GPU unavailable: running on CPU"
