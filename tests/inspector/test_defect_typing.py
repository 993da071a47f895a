"""Defect typing at the station: embeddings stored, a reviewer's label types the next regions at once."""

from __future__ import annotations

import csv
import dataclasses
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from inspector.defect_typing import DefectTyper
from inspector.recipe import load_recipe
from inspector.recording import ResultRecorder
from inspector.results import InspectionResult
from inspector.station import Station
from inspector.store import Store
from models.defect_types import COLOUR_DIMS, DefectTypeConfig
from tests.helpers.images import textured_part, with_defect


def test_a_label_given_in_review_types_the_next_defects(taught_recipe: Path, tmp_path: Path) -> None:
    station = Station.load(load_recipe(taught_recipe))
    rng = np.random.default_rng(3)
    frames = [with_defect(textured_part(rng), rng)[0] for _ in range(4)]
    with Store(tmp_path / "stats.db") as store:
        typer = DefectTyper(store, station.name, refresh_s=0.0)
        station.attach_typer(typer)

        def inspect_and_label(frame: np.ndarray, label: str | None) -> InspectionResult:
            result = station.inspect_image(frame)
            store.record(result)
            store.flush()
            if label is not None:
                newest = max(store.inspections(recipe=station.name), key=lambda r: r.id)
                store.set_defect_class(label, user="qa", region_id=newest.regions[0].id)
            return result

        first = inspect_and_label(frames[0], "scratch")
        assert first.regions, "the drawn defect must give a region"
        region = first.regions[0]
        assert region.embedding is not None and region.embedding.dtype == np.float32
        # features (mean, max, both of the residual to the good bank, mean and max of the region's crop
        # re-embedded) then the colour statistics
        assert len(region.embedding) == 6 * 384 + COLOUR_DIMS
        assert np.linalg.norm(region.embedding[:-COLOUR_DIMS]) == pytest.approx(1.0, abs=1e-5)
        assert region.predicted_class is None          # nothing labelled yet: no guess

        # one example: nothing to measure near or far by (it typed every region as it, at 100 %)
        second = inspect_and_label(frames[1], "scratch")
        assert second.regions[0].predicted_class is None
        assert typer.n_examples == 1 and typer.classes == ("scratch",) and not typer.can_guess

        # two: the next part is typed at once, no retraining (the same part again, so the guess is known)
        again = inspect_and_label(frames[0], None)
        assert typer.n_examples == 2 and typer.can_guess
        assert again.regions[0].predicted_class == "scratch"
        assert 0.5 < (again.regions[0].type_confidence or 0.0) < 1.0, "one type: not sure of itself by default"
        stored = store.inspections(recipe=station.name)
        newest = max(stored, key=lambda r: r.id).regions[0]
        # predicted and confirmed are kept apart: the guess is not a reviewer's class
        assert newest.predicted_class == "scratch" and newest.defect_class is None
        assert newest.predicted_confidence == pytest.approx(again.regions[0].type_confidence)
        store.export_csv(tmp_path / "inspections.csv")
        with (tmp_path / "inspections.csv").open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert [r["predicted_classes"] for r in rows] == ["", "", "scratch"]
        assert [r["defect_classes"] for r in rows] == ["scratch", "scratch", ""]

        # a second type with one example: chosen between the two, "unknown" judged by the scratches' spread
        inspect_and_label(frames[2], "dent")
        dent = station.inspect_image(frames[2])
        assert typer.classes == ("dent", "scratch") and dent.regions[0].predicted_class == "dent"

        # a relabel replaces the example's class rather than adding a second one
        record = min(store.inspections(recipe=station.name), key=lambda r: r.id)
        store.set_defect_class("dent", user="qa", region_id=record.regions[0].id)
        relabelled = station.inspect_image(frames[0])
        assert typer.n_examples == 3 and relabelled.regions[0].predicted_class == "dent"


def test_the_recorder_gives_a_loaded_station_its_typer(taught_recipe: Path, tmp_path: Path) -> None:
    station = Station.load(load_recipe(taught_recipe))
    with Store(tmp_path / "stats.db") as store:
        recorder = ResultRecorder(store)
        recorder.use(station)
        assert isinstance(station.typer, DefectTyper) and station.typer.recipe == station.name
        assert (station.typer.config.k, station.typer.config.reject_factor) == (2, 1.25)   # the defaults
        recorder.close()


def test_the_recipe_sets_the_typers_k_and_unknown_factor(taught_recipe: Path, tmp_path: Path) -> None:
    import dataclasses

    from inspector.recipe import DefectTypingSettings

    recipe = load_recipe(taught_recipe)
    recipe = dataclasses.replace(recipe, defect_typing=DefectTypingSettings(k=1, unknown_factor=3.0))
    station = Station.load(recipe)
    with Store(tmp_path / "stats.db") as store:
        recorder = ResultRecorder(store)
        recorder.use(station)
        assert isinstance(station.typer, DefectTyper)
        assert (station.typer.config.k, station.typer.config.reject_factor) == (1, 3.0)
        recorder.close()


def test_a_recipe_can_turn_the_crop_pass_off_and_the_crop_part_follows_the_region(
        taught_recipe: Path, tmp_path: Path) -> None:
    import dataclasses

    from inspector.defect_typing import typer_config
    from inspector.recipe import DefectTypingSettings

    recipe = load_recipe(taught_recipe)
    frame = with_defect(textured_part(np.random.default_rng(5)), np.random.default_rng(5))[0]
    embeddings = {}
    for side in (0, 224):
        changed = dataclasses.replace(recipe, defect_typing=DefectTypingSettings(crop_side=side))
        station = Station.load(changed)
        with Store(tmp_path / f"stats{side}.db") as store:
            station.attach_typer(DefectTyper(store, station.name, config=typer_config(changed), refresh_s=0.0))
            assert station.typer is not None and station.typer.config.crop_side == side
            result = station.inspect_image(frame)
        assert result.regions and result.regions[0].embedding is not None
        embeddings[side] = result.regions[0].embedding
    assert len(embeddings[0]) == 4 * 384 + COLOUR_DIMS      # the frame's features only: no second pass
    assert len(embeddings[224]) == 6 * 384 + COLOUR_DIMS
    # the same frame part (scaled by joining) and colour tail; the crop part is its own
    head0, head224 = embeddings[0][:-COLOUR_DIMS], embeddings[224][:4 * 384]
    np.testing.assert_allclose(head224 / np.linalg.norm(head224), head0, atol=1e-4)
    np.testing.assert_allclose(embeddings[0][-COLOUR_DIMS:], embeddings[224][-COLOUR_DIMS:], atol=1e-5)


def test_only_the_largest_regions_get_the_crop_pass_the_others_keep_the_same_layout(tmp_path: Path) -> None:
    from inspector.defect_typing import type_regions
    from models.defect_types import region_embedding, region_weights

    rng = np.random.default_rng(0)
    boxes = [(5 + 22 * i, 10, 4 + 3 * i, 4 + 3 * i) for i in range(6)]      # six spots, growing
    found, crop_map, features, pixels = _spots(boxes, rng)
    batches: list[int] = []

    def embed(crops, side):
        batches.append(len(crops))
        out = rng.standard_normal((len(crops), 4, 4, 8)).astype(np.float32)
        return out / np.linalg.norm(out, axis=-1, keepdims=True)

    with Store(tmp_path / "stats.db") as store:
        typer = DefectTyper(store, "part", config=DefectTypeConfig(crop_regions=4, scope="region"), refresh_s=0.0)
        typed = type_regions(found, typer=typer, patch_features=features, crop_map=crop_map, pixel_threshold=0.5,
                             offset=(0, 0), shorter_side=140, crop_rgb=pixels, embed_crops=embed)
    assert batches == [4]                                  # one batch, the four largest (default: the largest)
    assert {len(r.embedding) for r in typed} == {4 * 8 + COLOUR_DIMS}
    for region, box in zip(typed[:2], boxes[:2], strict=True):   # the two smallest: their frame pooling
        weights = region_weights(crop_map, box=box, pixel_threshold=0.5)
        expected = region_embedding(features, weights, shorter_side=140, crop="frame")
        np.testing.assert_allclose(region.embedding[:-COLOUR_DIMS], expected, atol=1e-6)
    frame_part = typed[5].embedding[:2 * 8]
    assert not np.allclose(typed[5].embedding[2 * 8:4 * 8] / np.linalg.norm(typed[5].embedding[2 * 8:4 * 8]),
                           frame_part / np.linalg.norm(frame_part), atol=1e-3)   # the largest: its own crop


def test_a_frames_regions_are_described_together_and_share_one_type(tmp_path: Path) -> None:
    from inspector.defect_typing import type_regions
    from inspector.results import InspectionResult, Verdict
    from models.defect_types import frame_weights, region_crop_descriptor, region_embedding, region_weights

    rng = np.random.default_rng(2)
    boxes = [(10, 10, 6, 6), (60, 70, 14, 10), (110, 20, 8, 8)]      # one defect the threshold cut in three
    found, crop_map, features, pixels = _spots(boxes, rng)
    crops = rng.standard_normal((1, 4, 4, 8)).astype(np.float32)
    batches: list[int] = []

    def embed(images, side):
        batches.append(len(images))
        return crops / np.linalg.norm(crops, axis=-1, keepdims=True)

    with Store(tmp_path / "stats.db") as store:
        typer = DefectTyper(store, "part", refresh_s=0.0)          # the default: scope "frame"
        assert typer.config.scope == "frame"
        typed = type_regions(found, typer=typer, patch_features=features, crop_map=crop_map, pixel_threshold=0.5,
                             offset=(0, 0), shorter_side=140, crop_rgb=pixels, embed_crops=embed)
        assert batches == [1]                                      # one crop pass: the largest region's
        assert all(r.predicted_class is None for r in typed)       # nothing labelled yet: no guess
        first = typed[0].embedding
        assert first is not None and all(np.array_equal(r.embedding, first) for r in typed)
        whole = frame_weights(crop_map, boxes=boxes, pixel_threshold=0.5)
        assert np.count_nonzero(whole) == sum(w * h for _, _, w, h in boxes)
        largest = region_weights(crop_map, box=boxes[1], pixel_threshold=0.5)
        crop = region_crop_descriptor(pixels, [(boxes[1], largest)], embed, side=224)[0]
        expected = region_embedding(features, whole, shorter_side=140, crop=crop)
        np.testing.assert_allclose(first[:-COLOUR_DIMS], expected, atol=1e-6)

        # a reviewer classifies every region of the inspection: one example, not three
        store.record(InspectionResult(frame_id=1, timestamp=1.0e9, source="cam", recipe="part", model_version="v1",
                                      verdict=Verdict.FAIL, score=1.0, regions=typed))
        store.flush()
        (record,) = store.inspections(recipe="part")
        assert store.set_defect_class("scratch", user="qa", inspection_id=record.id) == 3
        assert typer.refresh() == 3 and typer.n_examples == 1

        def type_first() -> tuple:
            return type_regions(found, typer=typer, patch_features=features, crop_map=crop_map, pixel_threshold=0.5,
                                offset=(0, 0), shorter_side=140, crop_rgb=pixels, embed_crops=embed)

        assert [r.predicted_class for r in type_first()] == [None] * 3    # one example: no guess yet
        other, other_map, other_features, other_pixels = _spots(boxes, rng)     # a second scratched part
        second = type_regions(other, typer=typer, patch_features=other_features, crop_map=other_map,
                              pixel_threshold=0.5, offset=(0, 0), shorter_side=140, crop_rgb=other_pixels,
                              embed_crops=embed)
        store.record(InspectionResult(frame_id=2, timestamp=1.0e9 + 1, source="cam", recipe="part",
                                      model_version="v1", verdict=Verdict.FAIL, score=1.0, regions=second))
        store.flush()
        newest = max(store.inspections(recipe="part"), key=lambda r: r.id)
        assert store.set_defect_class("scratch", user="qa", inspection_id=newest.id) == 3
        assert typer.refresh() == 3 and typer.n_examples == 2
        assert [r.predicted_class for r in type_first()] == ["scratch"] * 3       # one type for all three
        # one region set apart by hand: a third example (another class on the same embedding)
        store.set_defect_class("dent", user="qa", region_id=record.regions[0].id)
        typer.refresh()
        assert typer.n_examples == 3 and typer.classes == ("dent", "scratch")


def test_the_crop_pass_sees_the_frame_as_a_brightness_standardising_detector_saw_it(tmp_path: Path) -> None:
    """With the frame standardised before the backbone, the crop is cut from it too; the colour stays the frame's."""
    from inspector.defect_typing import type_regions
    from models.defect_types import region_crop_box
    from models.preprocess import standardise_brightness

    rng = np.random.default_rng(4)
    boxes = [(40, 50, 12, 10)]
    found, crop_map, features, pixels = _spots(boxes, rng)
    dark = (pixels // 4).astype(np.uint8)                  # a frame far darker than the standard grey
    seen: list[np.ndarray] = []

    def embed(crops, side):
        seen.extend(np.array(c) for c in crops)
        out = rng.standard_normal((len(crops), 4, 4, 8)).astype(np.float32)
        return out / np.linalg.norm(out, axis=-1, keepdims=True)

    typed = {}
    with Store(tmp_path / "stats.db") as store:
        typer = DefectTyper(store, "part", refresh_s=0.0)
        for standardised in (False, True):
            typed[standardised] = type_regions(found, typer=typer, patch_features=features, crop_map=crop_map,
                                               pixel_threshold=0.5, offset=(0, 0), shorter_side=140, crop_rgb=dark,
                                               embed_crops=embed, standardised=standardised)
    x, y, side = region_crop_box(boxes[0], dark.shape[:2])
    np.testing.assert_array_equal(seen[0], dark[y:y + side, x:x + side])
    np.testing.assert_array_equal(seen[1], standardise_brightness(dark)[y:y + side, x:x + side])
    assert seen[1].mean() > 2 * seen[0].mean()
    np.testing.assert_array_equal(typed[False][0].embedding[-COLOUR_DIMS:], typed[True][0].embedding[-COLOUR_DIMS:])


def test_an_older_store_is_upgraded_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:     # the schema before typing: no predicted_* columns
        conn.executescript("""
            CREATE TABLE inspections (id INTEGER PRIMARY KEY AUTOINCREMENT, time FLOAT NOT NULL,
                recipe TEXT NOT NULL, model_version TEXT NOT NULL, line TEXT NOT NULL, station TEXT NOT NULL,
                lot TEXT NOT NULL, source TEXT NOT NULL, frame_id BIGINT NOT NULL, path TEXT,
                verdict VARCHAR(8) NOT NULL, score FLOAT, latency_ms FLOAT, image_path TEXT,
                overlay_path TEXT, error TEXT);
            CREATE TABLE regions (id INTEGER PRIMARY KEY AUTOINCREMENT, inspection_id INTEGER NOT NULL
                REFERENCES inspections(id) ON DELETE CASCADE, x INTEGER NOT NULL, y INTEGER NOT NULL,
                w INTEGER NOT NULL, h INTEGER NOT NULL, area_px INTEGER NOT NULL, area_mm2 FLOAT,
                max_score FLOAT, mean_score FLOAT, defect_class TEXT, classified_by TEXT, classified_at FLOAT);
            CREATE TABLE store_meta (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO store_meta VALUES ('schema_version', '1');
            INSERT INTO inspections VALUES (1, 1.0e9, 'part', 'v1', '', '', 'L1', 'cam', 0, NULL, 'FAIL',
                0.9, 5.0, NULL, NULL, NULL);
            INSERT INTO regions VALUES (1, 1, 1, 2, 3, 4, 12, NULL, 0.9, 0.7, 'scratch', 'qa', 1.0e9);
        """)
    with Store(path) as store:
        record = store.get_inspection(1)
        assert record.regions[0].defect_class == "scratch" and record.regions[0].predicted_class is None
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(regions)")}
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(regions)")}
    assert {"predicted_class", "predicted_confidence"} <= columns
    assert "region_embeddings" in tables and "ix_regions_classified_at" in indexes


def _labelled(store: Store, recipe: str, embeddings: list[np.ndarray], classes: list[str]) -> None:
    """Record one FAIL inspection per embedding and give each region its reviewer's class."""
    from inspector.results import DefectRegion, InspectionResult, Verdict

    for i, embedding in enumerate(embeddings):
        region = DefectRegion(x=1, y=1, width=4, height=4, area_px=16, area_mm2=None, max_score=0.9,
                              mean_score=0.7, embedding=embedding.astype(np.float32))
        store.record(InspectionResult(frame_id=i, timestamp=1.0e9 + i, source="cam", recipe=recipe,
                                      model_version="v1", verdict=Verdict.FAIL, score=0.9, regions=(region,)))
    store.flush()
    newest = sorted(store.inspections(recipe=recipe), key=lambda r: r.id)[-len(classes):]
    for record, defect_class in zip(newest, classes, strict=True):
        store.set_defect_class(defect_class, user="qa", region_id=record.regions[0].id)


def test_labels_embedded_by_an_older_descriptor_are_kept_but_not_used(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    old = [rng.standard_normal(4) for _ in range(3)]        # the descriptor before: another length
    new = [np.eye(8)[0] + 0.01 * rng.standard_normal(8), np.eye(8)[1] + 0.01 * rng.standard_normal(8)]
    with Store(tmp_path / "stats.db") as store:
        _labelled(store, "part", old + new, ["scratch", "scratch", "dent", "scratch", "dent"])
        # hand-made feature vectors: no colour statistics in them
        typer = DefectTyper(store, "part", config=DefectTypeConfig(colour_weight=0.0), refresh_s=0.0)
        typed = typer.predict([np.eye(8)[0].astype(np.float32), np.eye(8)[1].astype(np.float32)])
        assert [t.defect_class for t in typed] == ["scratch", "dent"]
        assert typer.n_examples == 2                      # the three old ones are left out, not mixed in
        # their reviewer's classes stay in the store
        assert sorted(r.regions[0].defect_class or "" for r in store.inspections(recipe="part")) == \
            ["dent", "dent", "scratch", "scratch", "scratch"]
        # a new label of the typed length is used at once; one of the old length is not
        _labelled(store, "part", [np.eye(8)[2], rng.standard_normal(4)], ["stain", "burn"])
        assert typer.predict([np.eye(8)[2].astype(np.float32)])[0].defect_class == "stain"
        assert typer.n_examples == 3 and typer.classes == ("dent", "scratch", "stain")


def test_labels_from_before_the_colour_statistics_are_left_out_without_failing(tmp_path: Path) -> None:
    # the old descriptor: a unit feature vector; the new one: a unit feature part and the colour tail.
    # Same length here, another layout: the typer must not read the old ones' last values as colour
    rng = np.random.default_rng(1)
    old = [_unit(np.eye(16)[i % 2] + 0.01 * rng.standard_normal(16)) for i in range(4)]

    def new(axis: int, dark: float) -> np.ndarray:
        head = _unit(np.eye(16 - COLOUR_DIMS)[axis] + 0.01 * rng.standard_normal(16 - COLOUR_DIMS))
        return np.concatenate([head, np.full(COLOUR_DIMS, dark) + 0.01 * rng.standard_normal(COLOUR_DIMS)])

    with Store(tmp_path / "stats.db") as store:
        _labelled(store, "part", old, ["scratch", "dent", "scratch", "dent"])
        # the default descriptor (colour on); a fixed rejection distance: two examples per type say little
        typer = DefectTyper(store, "part", config=DefectTypeConfig(reject_distance=1.5), refresh_s=0.0)
        assert typer.n_examples == 0
        _labelled(store, "part", [new(0, -0.2), new(1, 0.2), new(0, -0.2), new(1, 0.2)], ["scratch", "dent"] * 2)
        typed = typer.predict([new(0, -0.2).astype(np.float32), new(1, 0.2).astype(np.float32)])
        assert [t.defect_class for t in typed] == ["scratch", "dent"]
        assert typer.n_examples == 4
        assert len(store.inspections(recipe="part")) == 8         # every label kept in the store


def test_the_typer_spreads_labels_over_the_recipes_unlabelled_regions(tmp_path: Path) -> None:
    """The store's unlabelled inspections join the typer's graph at start, each typed frame after it."""
    from inspector.results import DefectRegion, InspectionResult, Verdict

    def at(degrees: float, lift: float = 0.0) -> np.ndarray:
        a = np.radians(degrees)
        return _unit(np.array([np.cos(a), np.sin(a), lift, 0, 0, 0, 0, 0]))

    # type a's regions along an arc (labels at one end), type b's in a tight cluster 20 degrees past its other end
    unlabelled = [at(d) for d in range(9, 58, 3)] + [at(d, 0.05) for d in (80.0, 81.0, 82.0, 82.5, 83.0)]
    with Store(tmp_path / "stats.db") as store:
        for i, embedding in enumerate(unlabelled):     # two regions each, one embedding: the frame's
            regions = tuple(DefectRegion(x=1 + 5 * j, y=1, width=4, height=4, area_px=16, area_mm2=None,
                                         max_score=0.9, mean_score=0.7, embedding=embedding) for j in range(2))
            store.record(InspectionResult(frame_id=100 + i, timestamp=1.0e9 + i, source="cam", recipe="part",
                                          model_version="v1", verdict=Verdict.FAIL, score=0.9, regions=regions))
        store.record(InspectionResult(frame_id=99, timestamp=1.0e9, source="cam", recipe="part", model_version="v1",
                                      verdict=Verdict.REVIEW, score=0.5, regions=(DefectRegion(
                                          x=1, y=1, width=4, height=4, area_px=16, area_mm2=None, max_score=0.6,
                                          mean_score=0.5, embedding=at(70.0)),)))     # REVIEW: not pooled
        _labelled(store, "other", [at(60.0)], ["b"])                 # another recipe's: never used here
        _labelled(store, "part", [at(0.0), at(3.0), at(6.0), at(79.5, 0.05), at(80.5, 0.05), at(81.5, 0.05)],
                  ["a"] * 3 + ["b"] * 3)
        config = DefectTypeConfig(colour_weight=0.0, centre=False, reject_distance=2.0)
        typer = DefectTyper(store, "part", config=config, refresh_s=0.0)
        assert typer.n_unlabelled == len(unlabelled)       # one per unlabelled FAIL inspection of this recipe
        assert typer.predict([at(60.0)])[0].defect_class == "a"     # 54 degrees from a's labels, 20 from b's
        assert typer.n_unlabelled == len(unlabelled) + 1            # the typed frame joins the pool
        typer.predict([at(45.0)], pool=False)                       # a REVIEW frame at the station
        assert typer.n_unlabelled == len(unlabelled) + 1
        one_b = next(r for r in store.inspections(recipe="part") if r.regions[0].defect_class == "b")
        store.set_defect_class("b2", user="qa", region_id=one_b.regions[0].id)
        typer.refresh()                                             # a relabel rebuilds the classifier
        assert "b2" in typer.classes and typer.n_unlabelled == len(unlabelled) + 1     # the pool carried over
        alone = DefectTyper(store, "part", config=dataclasses.replace(config, spread_alpha=0.0), refresh_s=0.0)
        assert alone.n_unlabelled == 0 and alone.predict([at(60.0)])[0].defect_class == "b"


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _spots(boxes: list[tuple[int, int, int, int]], rng: np.random.Generator) -> tuple[list, np.ndarray, ...]:
    """A 140 x 140 ROI whose map is 1 inside ``boxes``: its regions, map, random unit patch features, pixels."""
    from inspector.results import DefectRegion

    crop_map = np.zeros((140, 140), np.float32)
    found = []
    for x, y, w, h in boxes:
        crop_map[y:y + h, x:x + w] = 1.0
        found.append(DefectRegion(x=x, y=y, width=w, height=h, area_px=w * h, area_mm2=None, max_score=1.0,
                                  mean_score=1.0))
    features = rng.standard_normal((10, 10, 8)).astype(np.float32)
    features /= np.linalg.norm(features, axis=-1, keepdims=True)
    return found, crop_map, features, rng.integers(0, 255, (140, 140, 3), dtype=np.uint8)


def test_a_fail_a_reviewer_calls_good_leaves_the_typers_pool(tmp_path: Path) -> None:
    """False alarms that bridge a region to another type's cluster mislead the spreading; called good, they leave."""
    from inspector.results import DefectRegion, InspectionResult, Verdict

    def at(degrees: float, lift: float = 0.0) -> np.ndarray:
        a = np.radians(degrees)
        return _unit(np.array([np.cos(a), np.sin(a), lift, 0, 0, 0, 0, 0]))

    # as above: type a's parts along an arc away from its labels, type b's in a cluster past its far end
    parts = [at(d) for d in range(9, 58, 3)] + [at(d, 0.05) for d in (80.0, 81.0, 82.0, 82.5, 83.0)]
    bridge = [at(d, 0.05) for d in (63.0, 66.0, 69.0, 72.0, 75.0, 78.0)]    # good parts flagged FAIL, between
    with Store(tmp_path / "stats.db") as store:
        for i, embedding in enumerate(parts + bridge):
            region = DefectRegion(x=1, y=1, width=4, height=4, area_px=16, area_mm2=None, max_score=0.9,
                                  mean_score=0.7, embedding=embedding)
            store.record(InspectionResult(frame_id=100 + i, timestamp=1.0e9 + i, source="cam", recipe="part",
                                          model_version="v1", verdict=Verdict.FAIL, score=0.9, regions=(region,)))
        _labelled(store, "part", [at(0.0), at(3.0), at(6.0), at(79.5, 0.05), at(80.5, 0.05), at(81.5, 0.05)],
                  ["a"] * 3 + ["b"] * 3)
        config = DefectTypeConfig(colour_weight=0.0, centre=False, reject_distance=2.0)
        typer = DefectTyper(store, "part", config=config, refresh_s=0.0)
        assert typer.n_unlabelled == len(parts) + len(bridge)
        assert typer.predict([at(60.0)], pool=False)[0].defect_class == "b"   # the false alarms lead it to b
        false_alarms = [r.id for r in store.inspections(recipe="part") if r.frame_id >= 100 + len(parts)]
        assert len(false_alarms) == len(bridge)
        for inspection_id in false_alarms:
            store.add_feedback(inspection_id, "good", user="qa", note="actually good (review screen)")
        assert typer.predict([at(60.0)], pool=False)[0].defect_class == "a"   # refreshed: they left the pool
        assert typer.n_unlabelled == len(parts)
        restarted = DefectTyper(store, "part", config=config, refresh_s=0.0)
        assert restarted.n_unlabelled == len(parts)                     # and are not read into it again
