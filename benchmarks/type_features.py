"""Extract once what the defect-typing variants need (``benchmarks/type_variants.py`` reads it).

For one MVTec-AD-layout category, teach the detector as ``inspector evaluate --types --fixed-config`` does
(recipe defaults as written: block 8, shorter side 448, 16 good shots, seed 0, pixel threshold calibrated from the
leave-one-out maps), with the backbone served from a ``FeatureStore`` that keeps all 12 blocks of
every input. Then, for every defective test image (at most ``--max-per-type``, the same seeded choice
as the evaluation), keep its anomaly map and all 12 blocks' raw patch tokens; for the good shots,
their 12 blocks' raw tokens (the good bank of any block). One ``.npz`` per image under ``OUT/CAT``.

Usage:
    python -m benchmarks.type_features DATA/mvtec_transistor --out /tmp/typefeat --cache /tmp/featcache
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._features import CachedBackbone, FeatureStore  # noqa: E402
from inspector.recipe import DetectorSettings  # noqa: E402
from models.backbone import create_backbone  # noqa: E402
from models.calibration import calibrate  # noqa: E402
from models.detectors import PatchKNNConfig  # noqa: E402
from models.detectors.patch_knn import PatchKNN  # noqa: E402
from models.evaluation import load_category, load_image_rgb, select_shots  # noqa: E402
from models.type_evaluation import _at_most  # noqa: E402
from models.weights import resolve_weights  # noqa: E402

logger = logging.getLogger("type_features")


class _Recording(CachedBackbone):
    """A ``CachedBackbone`` that also keeps the last batch's 12 blocks (raw, fp16) for the caller."""

    last: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.last = self.store.get(images)                      # (B, h, w, 12, D) fp16, a cache hit below
        return super().forward(images)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("category", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=None,
                   help="FeatureStore folder (all blocks, fp16); required to extract")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-per-type", type=int, default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--eval-cache", type=Path, default=None,
                   help="only fill this `inspector evaluate --types --cache` folder from OUT (no backbone run)")
    args = p.parse_args(argv)
    if args.eval_cache is not None:
        return fill_eval_cache(args.category, args.out, args.eval_cache, shots=args.shots, seed=args.seed,
                               weights=args.weights)
    if args.cache is None:
        p.error("--cache FOLDER is needed to extract (the FeatureStore that keeps all 12 blocks)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)

    defaults = DetectorSettings()
    resolved = resolve_weights(defaults.backbone, args.weights)
    full = create_backbone(defaults.backbone, state_dict=resolved.state_dict, blocks=tuple(range(1, 13)))
    store = FeatureStore(args.cache, weights_sha256=resolved.info.sha256, full=full)
    backbone = _Recording(store, blocks=tuple(defaults.blocks))
    config = PatchKNNConfig.from_dict(dict(defaults.options))
    detector = PatchKNN(backbone=backbone, config=config)

    category = load_category(args.category)
    out = args.out / category.name
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    shots = select_shots(category.train_good, args.shots, seed=args.seed)
    detector.fit([load_image_rgb(p) for p in shots])
    train_tokens: list[np.ndarray] = []
    for path in shots:                         # one by one (the recorder keeps the last batch): cache hits
        backbone.last = None
        detector.predict(load_image_rgb(path))
        assert backbone.last is not None
        train_tokens.append(backbone.last[0].numpy())
    thresholds = calibrate(np.asarray(detector.train_scores), good_maps=detector.train_maps or None)
    for i, tokens in enumerate(train_tokens):
        np.save(out / f"train_{i:02d}.npy", tokens)
    logger.info("%s: fitted on %d shots in %.0f s, pixel threshold %.4f, masking %s", category.name, len(shots),
                time.perf_counter() - start, thresholds.pixel, detector.masking_active)

    defects = [t for t in category.test if t.label == 1]
    if args.max_per_type is not None:
        defects = _at_most(defects, args.max_per_type, seed=args.seed)
    # a seeded shuffle, and meta.json rewritten after every image: a partial run is a random subset
    order = np.random.default_rng(args.seed).permutation(len(defects))
    defects = [defects[int(i)] for i in order]
    names: list[dict[str, Any]] = []
    meta = {"category": category.name, "pixel_threshold": float(thresholds.pixel),
            "shorter_side": int(config.shorter_side), "shots": len(shots), "seed": args.seed,
            "max_per_type": args.max_per_type, "masking_active": bool(detector.masking_active),
            "weights_sha256": resolved.info.sha256, "items": names, "complete": False}
    for n, item in enumerate(defects):
        name = f"{item.defect_type}__{item.path.stem}"
        target = out / f"{name}.npz"
        if not target.is_file():
            backbone.last = None
            detection = detector.predict(load_image_rgb(item.path), with_features=True)
            assert backbone.last is not None
            partial = target.with_suffix(".part.npz")          # then renamed: a killed run leaves no half file
            np.savez(partial, tokens=backbone.last[0].numpy(),
                     anomaly_map=np.asarray(detection.anomaly_map[0]).astype(np.float16),
                     score=np.float32(detection.pred_score[0]))
            partial.replace(target)
        names.append({"name": name, "defect_type": item.defect_type})
        meta["seconds"] = time.perf_counter() - start
        (out / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        logger.info("%s %d/%d %s (%.0f s)", category.name, n + 1, len(defects), name, time.perf_counter() - start)
    meta["complete"] = True
    (out / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return 0


def fill_eval_cache(category_root: Path, out: Path, eval_cache: Path, *, shots: int, seed: int,
                    weights: str | None) -> int:
    """Write what ``inspector evaluate --types --cache`` reads, from this script's extraction.

    The evaluation caches, per defect image, the detector's block-8 patch features (L2-normalised, as
    ``Detection.patch_features``) and its anomaly map, and the pixel threshold; the same folder name
    as ``models.type_evaluation`` and ``inspector evaluate`` compute, so the CLI then runs on them.
    The features are the FeatureStore's fp16 tokens normalised here, the maps the detector's own.
    """
    import hashlib

    defaults = DetectorSettings()
    resolved = resolve_weights(defaults.backbone, weights)
    config = PatchKNNConfig.from_dict(dict(defaults.options))
    if config.patch_pooling != 1:
        msg = "the evaluation cache is filled only for patch_pooling 1 (the recipe default)"
        raise SystemExit(msg)
    key = json.dumps([resolved.info.sha256, defaults.backbone, list(defaults.blocks), config.to_dict()],
                     sort_keys=True)
    root = Path(category_root)
    digest = hashlib.sha256(f"{root.resolve()}|{shots}|{seed}|{key}".encode()).hexdigest()[:16]
    folder = eval_cache / f"{root.name}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    source = out / root.name
    meta = json.loads((source / "meta.json").read_text(encoding="utf-8"))
    if not meta.get("complete"):
        msg = f"{source}: the extraction is not complete"
        raise SystemExit(msg)
    block = defaults.blocks[0] - 1

    def unit(tokens: np.ndarray) -> np.ndarray:
        t = tokens[..., block, :].astype(np.float32)
        return t / np.linalg.norm(t, axis=-1, keepdims=True)

    for entry in meta["items"]:
        with np.load(source / f"{entry['name']}.npz") as data:
            np.savez(folder / f"{entry['name']}.npz", features=unit(data["tokens"]).astype(np.float16),
                     anomaly_map=data["anomaly_map"])
    bank = np.concatenate([unit(np.load(p)).reshape(-1, 384) for p in sorted(source.glob("train_*.npy"))])
    np.save(folder / "bank.npy", bank.astype(np.float16))
    (folder / "meta.json").write_text(json.dumps({"pixel_threshold": meta["pixel_threshold"],
                                                  "shorter_side": meta["shorter_side"]}), encoding="utf-8")
    print(f"filled {folder} with {len(meta['items'])} images and a bank of {len(bank)} patches")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
