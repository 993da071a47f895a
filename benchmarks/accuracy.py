"""Accuracy benchmark: our PatchKNN against anomalib's AnomalyDINO, same weights, images and size.

For every category under the data root (MVTec AD layout), in two settings (``--shots`` training
images, and all of them capped by ``--full-cap``), both detectors are fitted and evaluated with
``models.evaluation.evaluate`` (image AUROC, AUPRO, pixel AUROC, F1 at the threshold calibrated on
good images, ms per image). Features of all 12 blocks are cached on disk per input tensor
(``benchmarks/_features.py``), so re-runs with other kNN settings skip the backbone; the peer is
served the same cached features (``benchmarks/_peer.py``). ``--sweep`` runs the one-pass sweep of
kNN-side settings (``benchmarks/_sweep.py``) instead of the table.

Usage (from the repository root):
    python -m benchmarks.accuracy --data ../shared/data --shots 16 --full-cap 200 --json out.json
    python -m benchmarks.accuracy --categories visa_fryum --limit-test 60 --settings 16
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Final

import torch

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:          # run as a script: make `models` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

from benchmarks._features import CachedBackbone, FeatureStore  # noqa: E402
from benchmarks._peer import PeerDetector, build_peer, check_peer_features  # noqa: E402
from benchmarks._timing import cpu_model, versions  # noqa: E402
from models.backbone import create_backbone  # noqa: E402
from models.detectors.patch_knn import PatchKNN, PatchKNNConfig  # noqa: E402
from models.evaluation import EvalReport, evaluate, load_category, load_image_rgb, subset_test  # noqa: E402
from models.files import atomic_write  # noqa: E402
from models.weights import resolve_weights  # noqa: E402

logger = logging.getLogger("benchmarks.accuracy")

DEFAULT_DATA: Final = REPO.parent / "shared" / "data"          # ../shared/data from the repo root
DEFAULT_CACHE: Final = Path("/tmp/inspector-bench-cache")        # features: GBs, never in the repo
MODEL_NAME: Final = "vit_small_patch14_dinov2"
PEER_BLOCK: Final = 12           # anomalib's AnomalyDINOModel: the last block of ViT-S/14


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of MVTec-AD-layout categories")
    p.add_argument("--categories", default=None, help="comma-separated names (default: every folder)")
    p.add_argument("--shots", type=int, default=16, help="few-shot setting: this many training images")
    p.add_argument("--full-cap", type=int, default=200, help="cap of the 'all training images' setting")
    p.add_argument("--settings", default="shots,all", help="which settings: 'shots', 'all' or both")
    p.add_argument("--limit-test", type=int, default=None, help="stratified subset of N test images")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="feature cache (outside the repo)")
    p.add_argument("--weights", default=None, help="DINOv2 weights file (default: models.weights resolution)")
    p.add_argument("--config", default="{}", help="JSON overrides of PatchKNNConfig for ours")
    p.add_argument("--blocks", default="8", help="our backbone blocks, e.g. 8 or 7,9 (1-based)")
    p.add_argument("--neighbourhood", type=int, default=1, help="ours: 3 = 3x3 mean of patch features")
    p.add_argument("--only", choices=("both", "ours", "peer"), default="both", help="which detectors to run")
    p.add_argument("--no-cache", action="store_true", help="run the backbones for real (true ms/image)")
    p.add_argument("--json", type=Path, default=None, help="write all reports here")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _categories(root: Path, names: str | None) -> list[Path]:
    if names:
        return [root / n.strip() for n in names.split(",") if n.strip()]
    found = sorted(p for p in root.iterdir() if (p / "train" / "good").is_dir())
    if not found:
        msg = f"{root}: no category folders (each needs train/good); pass --data"
        raise SystemExit(msg)
    return found


def _fmt(x: float) -> str:
    return "  -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _row(cat: str, setting: str, ours: EvalReport | None, peer: EvalReport | None) -> str:
    def cols(r: EvalReport | None) -> str:
        if r is None:
            return " | ".join(["  -  "] * 4 + ["   -  "])
        return " | ".join([_fmt(r.image_auroc), _fmt(r.aupro), _fmt(r.pixel_auroc), _fmt(r.f1),
                           f"{r.ms_per_image:6.0f}"])
    return f"| {cat:<18} | {setting:<8} | {cols(ours)} | {cols(peer)} |"


HEADER: Final = (
    "| category           | setting  | ours img AUROC | AUPRO | pix AUROC | F1 | ms/img "
    "| peer img AUROC | AUPRO | pix AUROC | F1 | ms/img |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    resolved = resolve_weights(MODEL_NAME, args.weights)
    logger.info("weights: %s (%s)", resolved.info.source, resolved.info.sha256[:12])
    full = create_backbone(MODEL_NAME, state_dict=resolved.state_dict, blocks=tuple(range(1, 13)),
                           device=args.device)
    store = FeatureStore(args.cache_dir / "features", weights_sha256=resolved.info.sha256, full=full)
    blocks = tuple(int(b) for b in args.blocks.split(","))
    config = PatchKNNConfig.from_dict(json.loads(args.config))
    peer_model = None if args.only == "ours" else build_peer(resolved.state_dict, model_name=MODEL_NAME)

    settings = []
    for s in args.settings.split(","):
        if s.strip() == "shots":
            settings.append((f"{args.shots}-shot", args.shots))
        elif s.strip() == "all":
            settings.append((f"all<={args.full_cap}", args.full_cap))
        else:
            settings.append((f"{int(s)}-shot", int(s)))

    rows: list[str] = []
    out: list[dict[str, Any]] = []
    for root in _categories(args.data, args.categories):
        category = load_category(root)
        items = subset_test(category.test, args.limit_test, seed=args.seed)
        if peer_model is not None and not args.no_cache:
            worst = check_peer_features(peer_model, store, [load_image_rgb(category.test[0].path)],
                                        config.shorter_side)
            logger.info("%s: peer's own features vs cached: min cosine similarity %.5f", category.name, worst)
        for label, shots in settings:
            ours = None
            if args.only != "peer":
                start = time.perf_counter()
                if args.no_cache:
                    if args.neighbourhood > 1:
                        msg = "--no-cache with --neighbourhood > 1 needs that option in PatchKNN itself"
                        raise SystemExit(msg)
                    backbone = create_backbone(MODEL_NAME, state_dict=resolved.state_dict, blocks=blocks,
                                               device=args.device)
                else:
                    backbone = CachedBackbone(store, blocks=blocks, neighbourhood=args.neighbourhood)
                ours = evaluate(PatchKNN(backbone=backbone, config=config), category, shots=shots,
                                seed=args.seed, test_items=items)
                logger.info("%s %s ours: AUROC %.3f AUPRO %.3f (%.0f s)", category.name, label,
                            ours.image_auroc, ours.aupro, time.perf_counter() - start)
            peer = None
            if peer_model is not None:
                start = time.perf_counter()
                peer_model.memory_bank = torch.empty(0)
                detector = PeerDetector(peer_model, store=None if args.no_cache else store,
                                        shorter_side=config.shorter_side)
                peer = evaluate(detector, category, shots=shots, seed=args.seed, test_items=items)
                logger.info("%s %s peer: AUROC %.3f AUPRO %.3f (%.0f s)", category.name, label,
                            peer.image_auroc, peer.aupro, time.perf_counter() - start)
            rows.append(_row(category.name, label, ours, peer))
            out.append({"category": category.name, "setting": label, "blocks": list(blocks),
                        "neighbourhood": args.neighbourhood,
                        "ours": ours.to_dict() if ours else None, "peer": peer.to_dict() if peer else None})
            print("\n".join([HEADER, *rows]), flush=True)
            if args.json:
                env = {"device": str(args.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "cpu": cpu_model(), "versions": versions(),
                       "weights": {"source": resolved.info.source, "sha256": resolved.info.sha256},
                       "command": "python -m benchmarks.accuracy " + " ".join(sys.argv[1:] if argv is None else argv)}
                atomic_write(args.json, json.dumps({"env": env, "results": out}, indent=1))
    print(f"\nfeature cache: {store.hits} hits, {store.misses} misses"
          f"{' (ms/img excludes the cached backbone)' if not args.no_cache else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
