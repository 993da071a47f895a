"""Issue 11, twenty-fifth look: the coarse scale in the anomaly map, at several weights, beside the product's map.

Since the eighth look the detector scores each frame at two scales (``models.detectors._scales``: patch features
as they are and pooled over 5 x 5 neighbours, each against its own bank) and fuses the two IMAGE scores; the map,
which outlines the defect (AUPRO, the regions an operator sees and the defect typing of issue 16), stayed the fine
scale's until this look. The coarse patch scores are computed anyway, so a map that adds them costs no search:

    map = (fine + w * (fine_mean / coarse_mean) * coarse) / (1 + w)

(per patch, before the upsampling and blur; ``fine_mean`` and ``coarse_mean`` are the fusion's leave-one-out
means, the image score's proportional units, so w = 0.2 weighs the coarse map as the image score does;
``ScaleFusion.fuse_maps``, the product's map since ``PatchKNNConfig.second_scale_map``). This probe runs
``benchmarks.accuracy`` unchanged (its image scores, thresholds and AUPRO are the product's, ``aupro_product``) and,
for every test frame, also keeps the map at each weight in ``--weights`` (0: the fine map alone), so that their AUPRO
comes from the same run. Every argument after the probe's own goes to ``benchmarks.accuracy``:

    python -m benchmarks.map_probe --weights 0,0.2,0.5,1 --json OUT.json -- --data ../shared/data \\
        --categories mvtec_transistor --settings 16 --seeds 0,1,2 --only ours --cache-dir CACHE
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:          # run as a script: make `models` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

import benchmarks.accuracy as accuracy  # noqa: E402
from models.detectors.patch_knn import PatchKNN  # noqa: E402
from models.evaluation import aupro, load_image_rgb, load_mask, resize_for_pixel_metrics  # noqa: E402
from models.files import atomic_write  # noqa: E402
from models.preprocess import to_model_input, uncrop_maps  # noqa: E402

_WEIGHTS: list[float] = []
_STASH: list[dict[float, np.ndarray]] = []     # one entry per scored frame, in the order evaluate scores them
_ROWS: list[dict[str, Any]] = []


def _score(self: PatchKNN, frames: torch.Tensor, geo: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``PatchKNN._score_frames_and_features`` as in the product, keeping the maps of every weight."""
    x = to_model_input(frames, shorter_side=self._config.shorter_side, patch_size=self._backbone.patch_size,
                       device=self.device)
    raw = self._core.extract(x)
    masks = self._scored_masks(raw) if self.masking_active else None
    fine = self._patch_scores(raw, masks=masks)
    image_scores = self._core.image_scores(fine)
    fusion = self._scales.fusion
    if fusion is None:
        msg = "the probe needs the second scale active (untiled, second_scale > patch_pooling, calibration scores)"
        raise SystemExit(msg)
    coarse = self._patch_scores(raw, coarse=True, masks=masks)
    image_scores = self._scales.fuse(image_scores, self._core.image_scores(coarse))
    image_scores = self._aligned.fuse(image_scores, self._embed(raw))
    # the product's own map (config.second_scale_map)
    maps = self._core.maps(fusion.fuse_maps(fine, coarse) if self._scales.in_map else fine, geo.crop)
    for b in range(frames.shape[0]):
        entry = {}
        for w in _WEIGHTS:
            fused = dataclasses.replace(fusion, weight=w).fuse_maps(fine[b : b + 1], coarse[b : b + 1])
            entry[w] = uncrop_maps(self._core.maps(fused, geo.crop)[:, None], geo)[0].cpu().numpy()
        _STASH.append(entry)
    return image_scores, uncrop_maps(maps[:, None], geo), raw


def _evaluate(original: Any) -> Any:
    def run(detector: Any, category: Any, **kwargs: Any) -> Any:
        _STASH.clear()
        report = original(detector, category, **kwargs)
        items = list(kwargs.get("test_items") or category.test)
        if len(_STASH) != len(items):
            msg = f"probe: {len(_STASH)} maps kept for {len(items)} test frames"
            raise SystemExit(msg)
        row: dict[str, Any] = {"category": category.name, "seed": kwargs.get("seed"), "shots": kwargs.get("shots"),
                               "image_auroc": report.image_auroc, "aupro_product": report.aupro, "aupro": {}}
        for w in _WEIGHTS:
            maps, masks = [], []
            for item, entry in zip(items, _STASH, strict=True):
                image = load_image_rgb(item.path)
                mask = (load_mask(item.mask_path, image.shape[:2]) if item.mask_path is not None
                        else np.zeros(image.shape[:2], dtype=bool))
                small_map, small_mask = resize_for_pixel_metrics(entry[w], mask, pixel_size=report.pixel_size)
                maps.append(small_map)
                masks.append(small_mask)
            row["aupro"][str(w)] = aupro(maps, masks)
        print(f"map probe {row['category']} seed {row['seed']}: AUPRO product {report.aupro:.3f}; "
              + ", ".join(f"w={w} {v:.3f}" for w, v in row["aupro"].items()), flush=True)
        _ROWS.append(row)
        _STASH.clear()
        return report
    return run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="0,0.2,0.5,1", help="coarse map weights (0: the product's map)")
    p.add_argument("--json", type=Path, help="write the probe's rows here")
    args = p.parse_args(argv[:split])
    _WEIGHTS[:] = [float(w) for w in args.weights.split(",")]
    PatchKNN._score_frames_and_features = _score     # type: ignore[method-assign,assignment]
    accuracy.evaluate = _evaluate(accuracy.evaluate)  # type: ignore[assignment]
    code = accuracy.main(argv[split + 1:])
    if args.json:
        atomic_write(args.json, json.dumps({"command": "python -m benchmarks.map_probe " + " ".join(argv),
                                            "rows": _ROWS}, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
