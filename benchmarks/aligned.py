"""Issue 11 item 2, aligned parts: position-restricted kNN and the global descriptor against today's default.

Five rows, one change at a time, from one backbone pass (cached) and two kNN searches per test image:

- ``default``: free kNN (``PatchKNNConfig()``: block 8, k=1, top 1 %, masking "auto");
- ``+position``: the search restricted to ``alignment_radius`` (0.1) around each patch's place;
- ``+global``: free kNN fused with the global descriptor's distance to the nearest good frame;
- ``both``: restricted kNN fused with the global term (``alignment="on"``);
- ``auto``: ``alignment="auto"``: ``both`` where the good frames call the product aligned, else ``default``.

One ``PatchKNN.fit`` with ``alignment="on"`` per run gives the bank, masking, the good frames' descriptors and
the fusion statistics; the free and restricted distances come from one product with the bank per image
(``_searches``, checked against ``PatchKNN.patch_scores`` on the first test images, and its leave-one-out
scores against the fit's), the "auto" decision from ``aligned_share`` of those leave-one-out distances with
the detector's rule, the global term from ``AlignedScoring`` and ``GlobalFusion``, and the ``both`` scores are
checked against ``PatchKNN.predict``.
Per defect type: AUROC of that type against the good images, and the share flagged (REVIEW or FAIL) at
the thresholds ``models.calibration.calibrate`` sets from the row's own leave-one-out good scores.

Usage (from the repository root):
    OMP_NUM_THREADS=1 nice -n 10 python -m benchmarks.aligned --data ../shared/data --cache-dir /tmp/featcache \\
        --categories mvtec_transistor,visa_fryum --seeds 0,1,2 --json benchmarks/results/issue11_aligned.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:          # run as a script: make `models` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

from benchmarks._features import CachedBackbone, FeatureStore  # noqa: E402
from benchmarks._timing import cpu_model, versions  # noqa: E402
from models.backbone import create_backbone  # noqa: E402
from models.calibration import calibrate  # noqa: E402
from models.detectors import PatchKNN, PatchKNNConfig  # noqa: E402
from models.detectors._aligned import GlobalFusion, aligned_share, grid_positions  # noqa: E402
from models.detectors._foreground import foreground_masks  # noqa: E402
from models.evaluation import image_auroc, load_category, load_image_rgb, select_shots, subset_test  # noqa: E402
from models.files import atomic_write  # noqa: E402
from models.preprocess import to_model_input  # noqa: E402
from models.weights import resolve_weights  # noqa: E402

logger = logging.getLogger("benchmarks.aligned")

DEFAULT_DATA: Final = REPO.parent / "shared" / "data"
MODEL_NAME: Final = "vit_small_patch14_dinov2"
BLOCKS: Final = (8,)
DEV_CATEGORIES: Final = ("mvtec_transistor", "visa_fryum", "mtd_magnetic_tile")
ROWS: Final = ("default", "+position", "+global", "both", "auto")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of MVTec-AD-layout categories")
    p.add_argument("--categories", default=",".join(DEV_CATEGORIES))
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--seeds", default="0,1,2", help="seeds of the shot choice")
    p.add_argument("--limit-test", default="", help="per category, e.g. mtd_magnetic_tile=60: a stratified subset")
    p.add_argument("--test-seed", type=int, default=1, help="seed of the stratified test subsets")
    p.add_argument("--cache-dir", type=Path, required=True, help="feature cache (outside the repo)")
    p.add_argument("--work", type=Path, default=None, help="per-run results (default: CACHE/aligned)")
    p.add_argument("--decision-only", action="store_true",
                   help="only fit with alignment 'auto' and record its decision (no test images)")
    p.add_argument("--json", type=Path, default=None, help="write the table here")
    return p.parse_args(argv)


def _limits(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (part.split("=") for part in text.split(",") if part)}


def _searches(det: PatchKNN, raw: torch.Tensor, owner: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, h, w, D) raw features -> (free, restricted) (h, w) patch scores from ONE product with the bank.

    The same arithmetic as ``PatchKNN.patch_scores`` with radius None and ``alignment_radius`` (masking and
    its fallback included; ``owner``: leave-one-out), at the cost of one search instead of two; ``_run``
    checks it against ``patch_scores`` on the first test images.
    """
    _, h, w, d = raw.shape
    cfg = det.config
    feats = det.core.embed(raw).reshape(-1, d)
    sim = feats @ det.memory_bank.float().T                                  # (h * w, M)
    if owner is not None:
        sim.masked_fill_(det.bank_owner[None, :] == owner, -torch.inf)
    free = (1.0 - sim.amax(dim=1)).clamp(min=0.0)
    far = torch.cdist(grid_positions(h, w, raw.device), det.bank_pos).square_() > cfg.alignment_radius ** 2
    near = (1.0 - sim.masked_fill_(far, -torch.inf).amax(dim=1)).clamp(min=0.0)
    near = torch.where(torch.isfinite(near), near, free)                     # nothing near: anywhere
    if det.masking_active:
        mask = foreground_masks(raw, threshold=cfg.mask_pca_threshold, border=cfg.mask_border,
                                min_centre_fraction=cfg.mask_min_centre_fraction, kernel_size=cfg.mask_kernel_size)[0]
        if float(mask.float().mean()) >= cfg.mask_fallback_ratio * det.reference_foreground:
            keep = mask.reshape(-1)
            free, near = free * keep, near * keep
    return free.reshape(h, w), near.reshape(h, w)


def _run(store: FeatureStore, args: argparse.Namespace, name: str, seed: int, limit: int | None) -> dict[str, Any]:
    """Every row's scores on one category and shot seed."""
    category = load_category(args.data / name)
    items = subset_test(category.test, limit, seed=args.test_seed)
    train = [load_image_rgb(p) for p in select_shots(category.train_good, args.shots, seed=seed)]
    backbone = CachedBackbone(store, blocks=BLOCKS)
    start = time.perf_counter()
    if args.decision_only:
        auto = PatchKNN(backbone=backbone, config=PatchKNNConfig(alignment="auto"))
        auto.fit(train)
        return {"aligned_share": auto.alignment_state.share, "auto_aligned": auto.aligned,
                "masking_active": auto.masking_active, "seconds": round(time.perf_counter() - start, 1)}
    on = PatchKNN(backbone=backbone, config=PatchKNNConfig(alignment="on"))   # bank, masking, descriptors
    on.fit(train)
    cfg = on.config
    fusion = on.alignment_state.fusion
    if fusion is None:
        msg = f"{name}: no leave-one-out scores to fuse with ({len(train)} shots)"
        raise SystemExit(msg)

    def features(frame: np.ndarray) -> torch.Tensor:
        return backbone(to_model_input(frame[None], shorter_side=cfg.shorter_side))

    def image_score(patch: torch.Tensor) -> float:
        return float(on.core.image_scores(patch[None])[0])

    # leave-one-out: every training frame against the bank without its own patches, free and restricted
    loo: dict[str, list[float]] = {"free": [], "near": []}
    free_all, near_all = [], []
    with torch.inference_mode():
        for owner, frame in enumerate(train):
            free, near = _searches(on, features(frame), owner)
            free_all.append(free.reshape(-1))
            near_all.append(near.reshape(-1))
            loo["free"].append(image_score(free))
            loo["near"].append(image_score(near))
    share = aligned_share(torch.cat(free_all), torch.cat(near_all))
    aligned = share is not None and share >= cfg.alignment_min_share      # the "auto" rule (AlignedScoring.decide)
    loo_free, loo_near = np.asarray(loo["free"]), np.asarray(loo["near"])
    loo_global = on.alignment_state.loo_global(list(range(len(train)))).numpy()
    if not np.allclose(fusion.fuse(torch.from_numpy(loo_near).float(), torch.from_numpy(loo_global)).numpy(),
                       on.train_scores, rtol=1e-4, atol=1e-6):
        msg = f"{name} seed {seed}: derived leave-one-out scores differ from the fit's {on.train_scores}"
        raise RuntimeError(msg)
    free_fusion = GlobalFusion.from_loo(loo_free, loo_global)
    parts: dict[str, list[float]] = {"free": [], "near": [], "global": []}
    with torch.inference_mode():
        for i, item in enumerate(items):
            raw = features(load_image_rgb(item.path))
            free, near = _searches(on, raw)
            if i < 2:     # the derived searches are the detector's own
                for mine, radius in ((free, None), (near, cfg.alignment_radius)):
                    theirs = on.patch_scores(raw, radius=radius)[0]
                    if not torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5):
                        msg = f"{name}: derived patch scores (radius {radius}) differ from PatchKNN.patch_scores"
                        raise RuntimeError(msg)
            parts["free"].append(image_score(free))
            parts["near"].append(image_score(near))
            parts["global"].append(float(on.alignment_state.global_scores(on.core.embed(raw))[0]))
    free_t, near_t, glob = (torch.tensor(parts[k]) for k in ("free", "near", "global"))
    scores = {
        "default": free_t.numpy(),
        "+position": near_t.numpy(),
        "+global": free_fusion.fuse(free_t, glob).numpy(),
        "both": fusion.fuse(near_t, glob).numpy(),
    }
    scores["auto"] = scores["both"] if aligned else scores["default"]
    good_loo = {
        "default": loo_free,
        "+position": loo_near,
        "+global": free_fusion.fuse(torch.from_numpy(loo_free).float(), torch.from_numpy(loo_global)).numpy(),
        "both": np.asarray(on.train_scores, np.float64),
    }
    good_loo["auto"] = good_loo["both"] if aligned else good_loo["default"]
    direct = on.predict([load_image_rgb(item.path) for item in items[:2]]).pred_score
    if not np.allclose(direct, scores["both"][:2], rtol=1e-4, atol=1e-6):
        msg = f"{name} seed {seed}: derived scores {scores['both'][:2]} differ from predict's {direct}"
        raise RuntimeError(msg)
    labels = np.array([it.label for it in items])
    types = sorted({it.defect_type for it in items if it.label})
    out: dict[str, Any] = {"aligned_share": share, "auto_aligned": aligned, "masking_active": on.masking_active,
                           "n_test": len(items), "seconds": round(time.perf_counter() - start, 1), "rows": {}}
    for row in ROWS:
        s = np.asarray(scores[row], np.float64)
        thresholds = calibrate(good_loo[row])
        per_type = {}
        for t in types:
            sel = np.array([it.defect_type in ("good", t) for it in items])
            flagged = s[np.array([it.defect_type == t for it in items])] >= thresholds.review
            per_type[t] = {"image_auroc": image_auroc(s[sel], labels[sel]), "flagged": float(flagged.mean())}
        out["rows"][row] = {"image_auroc": image_auroc(s, labels), "per_type": per_type,
                            "good_flagged": float((s[labels == 0] >= thresholds.review).mean()),
                            "defect_flagged": float((s[labels == 1] >= thresholds.review).mean())}
    logger.info("%s seed %d (%d test images, aligned share %s -> %s, %.0f s): %s", name, seed, len(items),
                share, aligned, out["seconds"], {r: round(v["image_auroc"], 3) for r, v in out["rows"].items()})
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    names = [n.strip() for n in args.categories.split(",") if n.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    limits = _limits(args.limit_test)
    resolved = resolve_weights(MODEL_NAME, None)
    full = create_backbone(MODEL_NAME, state_dict=resolved.state_dict, blocks=tuple(range(1, 13)), device="cpu")
    store = FeatureStore(args.cache_dir / "features", weights_sha256=resolved.info.sha256, full=full)
    work: Path = args.work or args.cache_dir / "aligned"
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, Any]] = {}
    for name in names:
        for seed in seeds:
            limit = limits.get(name)
            tail = "_decision" if args.decision_only else f"_test{limit or 0}s{args.test_seed}"
            path = work / f"{name}_shots{args.shots}_seed{seed}{tail}.json"
            if path.is_file():
                result = json.loads(path.read_text())
            else:
                result = _run(store, args, name, seed, limit)
                atomic_write(path, json.dumps(result, indent=1))
            runs.setdefault(name, {})[str(seed)] = result
    if args.decision_only:
        print(json.dumps(runs, indent=1))
        if args.json is not None:
            atomic_write(args.json, json.dumps({"benchmark": "issue11_aligned_decision", "shots": args.shots,
                                                "seeds": seeds, "runs": runs}, indent=1))
        return 0
    table: dict[str, Any] = {}
    for row in ROWS:
        cats = {}
        for name, per_seed in runs.items():
            vals = [r["rows"][row]["image_auroc"] for r in per_seed.values()]
            cats[name] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "per_seed": vals}
        table[row] = {"categories": cats, "mean_image_auroc": float(np.mean([c["mean"] for c in cats.values()]))}
    base = table["default"]
    for row in ROWS:
        diffs = [table[row]["categories"][n]["mean"] - base["categories"][n]["mean"] for n in runs]
        table[row]["worst_category_change"] = float(min(diffs))
        # the rule needs the full test sets of all three dev categories; otherwise no verdict
        complete = set(runs) >= set(DEV_CATEGORIES) and not limits
        table[row]["kept_by_rule"] = (bool(table[row]["mean_image_auroc"] > base["mean_image_auroc"]
                                           and min(diffs) >= -0.01) if complete else None)
    print(f"{'row':<10} " + " ".join(f"{n[:18]:>18}" for n in runs) + "   mean   worst  kept")
    for row in ROWS:
        t = table[row]
        cells = " ".join(f"{c['mean']:.3f}+-{c['std']:.3f}".rjust(18) for c in t["categories"].values())
        print(f"{row:<10} {cells}  {t['mean_image_auroc']:.3f}  {t['worst_category_change']:+.3f}  "
              f"{'n/a' if t['kept_by_rule'] is None else t['kept_by_rule']}")
    if args.json is not None:
        doc = {"benchmark": "issue11_aligned", "model": MODEL_NAME, "blocks": list(BLOCKS), "shots": args.shots,
               "seeds": seeds, "resolution": "shorter side 448", "test_limits": limits, "test_seed": args.test_seed,
               "device": "cpu", "cpu": cpu_model(), "threads": 1, "versions": versions(),
               "weights_sha256": resolved.info.sha256, "table": table, "runs": runs}
        atomic_write(args.json, json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
