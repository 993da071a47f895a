"""Latency of the product's default detector against the same detector with some options changed, in one run.

Both detectors share one backbone (the default recipe's blocks, real weights) and are fitted on the same good
frames of a category; the test frames are scored one at a time, the two detectors interleaved frame by frame,
for several rounds, so that load changes of a shared machine hit both alike. Prints the median milliseconds per
frame of each and their ratio; ``--json`` keeps them with the conditions.

Usage (from the repository root):
    python -m benchmarks.config_latency --data-root ../shared/data/mvtec_transistor \\
        --changed '{"second_scale": 0}' --threads 1 --json benchmarks/results/OUT.json
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

from benchmarks._timing import cpu_model, versions  # noqa: E402
from inspector.recipe import DetectorSettings  # noqa: E402
from models.backbone import DinoBackbone, create_backbone  # noqa: E402
from models.detectors import PatchKNN, PatchKNNConfig  # noqa: E402
from models.evaluation import load_category, load_image_rgb  # noqa: E402
from models.files import atomic_write  # noqa: E402
from models.weights import resolve_weights  # noqa: E402

logger = logging.getLogger(__name__)


def _frames(data_root: Path, shots: int, frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The first ``shots`` good training frames and ``frames`` test frames spread over the test folder."""
    category = load_category(data_root)
    if len(category.train_good) < shots or not category.test:
        msg = f"{data_root}: needs {shots} good training images and some test images"
        raise SystemExit(msg)
    step = max(len(category.test) // frames, 1)
    test = category.test[::step][:frames]
    return [load_image_rgb(p) for p in category.train_good[:shots]], [load_image_rgb(t.path) for t in test]


def measure(data_root: Path, changed: dict[str, Any], *, shots: int, frames: int, rounds: int,
            weights: str | None = None, backbone: DinoBackbone | None = None,
            base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Median ms per frame of the default and the changed configuration (interleaved), and their ratio.

    ``backbone`` (tests) replaces the default recipe's with real weights; ``base`` changes both configurations.
    """
    weights_info: dict[str, Any] = {"source": "given backbone", "sha256": None}
    if backbone is None:
        settings = DetectorSettings()
        resolved = resolve_weights(settings.backbone, weights)
        backbone = create_backbone(settings.backbone, state_dict=resolved.state_dict, blocks=tuple(settings.blocks),
                                   device="cpu")
        weights_info = {"source": resolved.info.source, "sha256": resolved.info.sha256}
    train, test = _frames(data_root, shots, frames)
    detectors = {}
    for name, options in (("default", {}), ("changed", changed)):
        detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(**{**(base or {}), **options}))
        detector.fit(train)
        detector.predict(test[0])                    # warm-up
        detectors[name] = detector
    times: dict[str, list[float]] = {name: [] for name in detectors}
    for _ in range(rounds):
        for frame in test:
            for name, detector in detectors.items():
                start = time.perf_counter()
                detector.predict(frame)
                times[name].append(time.perf_counter() - start)
    median = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    return {
        "category": data_root.name, "changed": changed, "shots": shots, "frames": len(test), "rounds": rounds,
        "median_ms": median, "default_over_changed": median["default"] / median["changed"],
        "banks": {name: d.bank_size for name, d in detectors.items()},
        "masking": detectors["default"].masking_active, "rotations": detectors["default"].rotations_used,
        "second_scale_active": {name: d.second_scale_active for name, d in detectors.items()},
        "weights": weights_info,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, action="append", required=True,
                   help="MVTec-AD-layout category (repeat for several)")
    p.add_argument("--changed", default='{"second_scale": 0}', help="JSON of PatchKNNConfig options changed")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--frames", type=int, default=8, help="test frames, spread over the test folder")
    p.add_argument("--rounds", type=int, default=3, help="passes over the frames")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--weights", default=None, help="DINOv2 weights file (default: models.weights resolution)")
    p.add_argument("--note", default="", help="conditions to keep in the JSON (e.g. what else ran)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    changed = json.loads(args.changed)
    rows = []
    for root in args.data_root:
        row = measure(root, changed, shots=args.shots, frames=args.frames, rounds=args.rounds, weights=args.weights)
        rows.append(row)
        print(f"{row['category']}: default {row['median_ms']['default']:.0f} ms, changed {changed} "
              f"{row['median_ms']['changed']:.0f} ms per frame (median of {row['frames']} frames x {args.rounds}): "
              f"default / changed = {row['default_over_changed']:.2f}", flush=True)
    if args.json is not None:
        command = "python -m benchmarks.config_latency " + " ".join(sys.argv[1:] if argv is None else argv)
        env = {"device": "cpu", "threads": torch.get_num_threads(), "cpu": cpu_model(), "versions": versions(),
               "note": args.note, "command": command}
        atomic_write(args.json, json.dumps({"env": env, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
