"""What the typer's crop pass costs beside the frame's own backbone pass (issue 16, typing fifth pass).

A REVIEW/FAIL frame's regions are re-embedded at ``DefectTypeConfig.crop_side`` in one batch
(``models.defect_types.crop_embedder``). This times, interleaved round by round on the same frame: the
frame's backbone pass at the recipe's shorter side (what every frame costs), and the crop pass for 1
and for 3 regions, with the real weights on this machine's CPU (or ``--device``). Ratios only: the
shared CPU's load moves absolute times.

Usage:
    python -m benchmarks.type_crop_cost --image DATA/visa_fryum/test/burnt/000.JPG --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from inspector.recipe import DetectorSettings, PreprocessSettings  # noqa: E402
from models.backbone import create_backbone  # noqa: E402
from models.defect_types import DefectTypeConfig, crop_embedder, region_crop_box  # noqa: E402
from models.detectors import PatchKNN, PatchKNNConfig  # noqa: E402
from models.evaluation import load_image_rgb  # noqa: E402
from models.preprocess import to_model_input  # noqa: E402
from models.weights import resolve_weights  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", type=Path, required=True, help="a frame of the product (any size)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    defaults, side = DetectorSettings(), PreprocessSettings().shorter_side
    crop_side = DefectTypeConfig().crop_side
    resolved = resolve_weights(defaults.backbone, args.weights)
    backbone = create_backbone(defaults.backbone, state_dict=resolved.state_dict, blocks=tuple(defaults.blocks),
                               device=args.device)
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=side))
    embed = crop_embedder(detector)
    assert embed is not None
    frame = load_image_rgb(args.image)
    h, w = frame.shape[:2]
    # three regions of the sizes seen on the dev sets: a spot, a streak, a dot
    boxes = [(w // 4, h // 4, w // 12, h // 12), (w // 2, h // 2, w // 8, h // 20),
             (w // 6, 2 * h // 3, w // 30, h // 30)]
    crops = []
    for box in boxes:
        x, y, s = region_crop_box(box, (h, w))
        crops.append(frame[y:y + s, x:x + s])

    def frame_pass() -> None:
        with torch.inference_mode():
            detector.core.extract(to_model_input(frame, shorter_side=side, device=detector.device))

    runs = {"frame": frame_pass, "crop_1": lambda: embed(crops[:1], crop_side),
            "crop_3": lambda: embed(crops, crop_side)}
    for fn in runs.values():                          # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            tick = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - tick)
    median = {k: float(np.median(v)) for k, v in times.items()}
    out = {
        "image": args.image.name, "frame_size": [h, w], "shorter_side": side, "crop_side": crop_side,
        "blocks": list(defaults.blocks), "device": args.device, "threads": args.threads, "rounds": args.rounds,
        "cpu": platform.processor() or platform.machine(), "load_average_1min_at_end": os.getloadavg()[0],
        "median_s": median,
        "crop_1_over_frame": median["crop_1"] / median["frame"],
        "crop_3_over_frame": median["crop_3"] / median["frame"],
        "weights": f"{resolved.info.model_name} ({resolved.info.tag}, sha256 {resolved.info.sha256[:12]})",
        "command": "python -m benchmarks.type_crop_cost " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
