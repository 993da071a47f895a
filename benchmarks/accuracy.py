"""Accuracy benchmark: our PatchKNN against anomalib's AnomalyDINO, same weights, images and size.

For every category under the data root (MVTec AD layout), in two settings (``--shots`` training
images, and all of them capped by ``--full-cap``), both detectors are fitted and evaluated with
``models.evaluation.evaluate`` (image AUROC, AUPRO, pixel AUROC, F1 at the threshold calibrated on
good images, ms per image). Features of all 12 blocks are cached on disk per input tensor
(``benchmarks/_features.py``), so re-runs with other kNN settings skip the backbone; the peer is
served the same cached features (``benchmarks/_peer.py``), at one or more blocks (``--peer-blocks``).
With several shot seeds (``--seeds``) every setting is run once per seed and a summary table gives
the mean and spread over seeds, with ours' operating point at the thresholds calibrated from the
good shots alone (``benchmarks/_table.py``).

Usage (from the repository root):
    python -m benchmarks.accuracy --data ../shared/data --shots 16 --full-cap 200 --json out.json
    python -m benchmarks.accuracy --categories visa_fryum --limit-test 60 --settings 16
    python -m benchmarks.accuracy --settings 16,4,1 --seeds 0,1,2 --peer-blocks 8,12 --json table.json
    python -m benchmarks.accuracy --settings shots --seeds 0,1,2 --self-tune --peer-blocks 8,12 --json table.json

``--self-tune`` adds the configuration that teaching ships (``inspector train`` chooses it from the good
shots alone, ``models.self_tune``) as "ours self-tuned", first in the table; "ours" stays the recipe's
configuration as written (``inspector train --fixed-config``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
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
from benchmarks._table import markdown_table, summarise  # noqa: E402
from benchmarks._timing import cpu_model, versions  # noqa: E402
from models.backbone import create_backbone  # noqa: E402
from models.detectors.patch_knn import PatchKNN, PatchKNNConfig  # noqa: E402
from models.evaluation import evaluate, load_category, load_image_rgb, select_shots, subset_test  # noqa: E402
from models.files import atomic_write  # noqa: E402
from models.self_tune import candidates_for, self_tune  # noqa: E402
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
    p.add_argument("--seed", type=int, default=0, help="shot seed (and test-subset seed)")
    p.add_argument("--seeds", default=None, help="comma-separated shot seeds, e.g. 0,1,2 (overrides --seed)")
    p.add_argument("--peer-blocks", default=str(PEER_BLOCK), help="peer blocks from the cache, e.g. 8,12")
    p.add_argument("--self-tune", action="store_true",
                   help="also 'ours self-tuned': the configuration that `inspector train` chooses from the good "
                        "shots (models.self_tune, no cycle-time budget), first in the table")
    p.add_argument("--choose-only", action="store_true",
                   help="with --self-tune: only the teach step's choice per category and seed, no test images "
                        "scored (the chosen configuration's numbers come from a run with --config)")
    return p.parse_args(argv)


def _categories(root: Path, names: str | None) -> list[Path]:
    if names:
        return [root / n.strip() for n in names.split(",") if n.strip()]
    found = sorted(p for p in root.iterdir() if (p / "train" / "good").is_dir())
    if not found:
        msg = f"{root}: no category folders (each needs train/good); pass --data"
        raise SystemExit(msg)
    return found


def _settings(args: argparse.Namespace) -> list[tuple[str, int]]:
    settings = []
    for s in args.settings.split(","):
        if s.strip() == "shots":
            settings.append((f"{args.shots}-shot", args.shots))
        elif s.strip() == "all":
            settings.append((f"all<={args.full_cap}", args.full_cap))
        else:
            settings.append((f"{int(s)}-shot", int(s)))
    return settings


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
    peer_blocks = [int(b) for b in args.peer_blocks.split(",")] if peer_model is not None else []
    if args.no_cache and peer_blocks != [PEER_BLOCK]:
        msg = f"--no-cache runs the peer's own backbone, which gives block {PEER_BLOCK} only; drop --peer-blocks"
        raise SystemExit(msg)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    ours = ["ours self-tuned", "ours"] if args.self_tune else ["ours"]
    detectors = ([] if args.only == "peer" else ours) + [f"peer b{b}" for b in peer_blocks]
    if args.choose_only and not args.self_tune:
        msg = "--choose-only needs --self-tune"
        raise SystemExit(msg)
    if args.self_tune and args.no_cache:
        msg = "--self-tune runs on the feature cache; drop --no-cache"
        raise SystemExit(msg)

    out: list[dict[str, Any]] = []
    for root in _categories(args.data, args.categories):
        category = load_category(root)
        items = subset_test(category.test, args.limit_test, seed=args.seed)
        if peer_model is not None and not args.no_cache:
            worst = check_peer_features(peer_model, store, [load_image_rgb(category.test[0].path)],
                                        config.shorter_side)
            logger.info("%s: peer's own features vs cached: min cosine similarity %.5f", category.name, worst)
        for label, shots in _settings(args):
            for seed in seeds:
                same_as_ours = None          # the self-tuned row's report when it chose the recipe's configuration
                for name in detectors:
                    start = time.perf_counter()
                    tuned: dict[str, Any] | None = None
                    chosen = config
                    if name == "ours self-tuned":
                        chosen, tuned = _self_tuned(config, category, shots, seed, args, blocks, store)
                        if args.choose_only:
                            out.append({"category": category.name, "setting": label, "shots": shots, "seed": seed,
                                        "detector": name, "self_tune": tuned})
                            break
                    if name == "ours" and same_as_ours is not None:
                        report = same_as_ours          # the same configuration, shots and features: the same scores
                    else:
                        report = evaluate(_detector(name, args, blocks, chosen, store, peer_model,
                                                    resolved.state_dict),
                                          category, shots=shots, seed=seed, test_items=items)
                    if name == "ours self-tuned" and chosen == config:
                        same_as_ours = report
                    point = report.operating_point
                    logger.info("%s %s seed %d %s: AUROC %.3f AUPRO %.3f flagged defects %s good %s (%.0f s)",
                                category.name, label, seed, name, report.image_auroc, report.aupro,
                                point.get("defect_flag_rate"), point.get("good_flag_rate"),
                                time.perf_counter() - start)
                    mine = name.startswith("ours")
                    out.append({"category": category.name, "setting": label, "shots": shots, "seed": seed,
                                "detector": name, "blocks": list(blocks) if mine else [int(name[6:])],
                                "neighbourhood": args.neighbourhood if mine else 1,
                                **({"self_tune": tuned} if tuned is not None else {}),
                                **({"report_of": "ours self-tuned"} if name == "ours" and report is same_as_ours
                                   else {}),
                                "report": report.to_dict()})
                summary = summarise(r for r in out if "report" in r)     # --choose-only rows have none
                if summary:
                    print(markdown_table(summary, detectors=detectors), flush=True)
                if args.json:
                    env = {"device": str(args.device), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "cpu": cpu_model(), "versions": versions(),
                           "weights": {"source": resolved.info.source, "sha256": resolved.info.sha256},
                           "test_images": "all" if args.limit_test is None else args.limit_test,
                           "command": "python -m benchmarks.accuracy "
                                      + " ".join(sys.argv[1:] if argv is None else argv)}
                    atomic_write(args.json, json.dumps({"env": env, "summary": summary, "results": out}, indent=1))
    print(f"\nfeature cache: {store.hits} hits, {store.misses} misses"
          f"{' (ms/img excludes the cached backbone)' if not args.no_cache else ''}")
    return 0


def _self_tuned(config: PatchKNNConfig, category: Any, shots: int | None, seed: int, args: argparse.Namespace,
                blocks: tuple[int, ...], store: FeatureStore) -> tuple[PatchKNNConfig, dict[str, Any]]:
    """The configuration `inspector train` would choose from this seed's shots (as ``inspector.teach``: the
    candidates of ``models.self_tune.candidates_for``, synthetic anomalies seeded 0), and what it measured."""
    images = [load_image_rgb(p) for p in select_shots(category.train_good, shots, seed=seed)]
    backbone = CachedBackbone(store, blocks=blocks, neighbourhood=args.neighbourhood)
    result = self_tune(images, lambda cfg, bb: PatchKNN(backbone=bb, config=cfg), config,
                       candidates_for(config, images[0].shape[:2], len(images)), backbone)
    logger.info("%s seed %d: %s", category.name, seed, result.reason)
    tuned = result.to_dict()
    for check in tuned["candidates"]:          # the per-image scores are long and say little in a table's JSON
        check.pop("good_scores")
        check.pop("synthetic_scores")
    return dataclasses.replace(config, **result.chosen.options), tuned


def _detector(name: str, args: argparse.Namespace, blocks: tuple[int, ...], config: PatchKNNConfig,
              store: FeatureStore, peer_model: Any, state_dict: dict[str, torch.Tensor]) -> Any:
    """A fresh unfitted detector: ours (PatchKNN on cached or real features) or the peer at one block."""
    if not name.startswith("ours"):
        peer_model.memory_bank = torch.empty(0)
        return PeerDetector(peer_model, store=None if args.no_cache else store,
                            shorter_side=config.shorter_side, block=int(name[6:]))
    if args.no_cache:
        if args.neighbourhood > 1:
            msg = "--no-cache with --neighbourhood > 1 needs that option in PatchKNN itself"
            raise SystemExit(msg)
        backbone = create_backbone(MODEL_NAME, state_dict=state_dict, blocks=blocks, device=args.device)
    else:
        backbone = CachedBackbone(store, blocks=blocks, neighbourhood=args.neighbourhood)
    return PatchKNN(backbone=backbone, config=config)


if __name__ == "__main__":
    sys.exit(main())
