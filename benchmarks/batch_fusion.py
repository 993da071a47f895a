"""Issue 11: a reviewer's folder scored with the batch's own evidence too (few-shot kNN fused with zero-shot MuSc).

An offline review of a folder sees every image of it at once. Two scores exist for each image: the recipe's
few-shot score (``PatchKNN`` against the good shots, today's default) and the zero-shot mutual score
(``models.detectors.zero_shot``: each patch against the patches of the other images of the batch, MuSc). They
err on different images (Spearman 0.84 / 0.88 on transistor / fryum), so a fusion may rank better than either.
Both fusions here have no parameter to tune:

- ``rank mean``: the mean of each score's rank in the batch;
- ``robust-z sum``: the sum of each score standardised by the batch's median and MAD (1.4826 x).

Inputs (nothing is scored again here): the few-shot kNN distances collected by ``benchmarks/levers.py`` (its
``--limit-test 0`` files under ``--work``: full test sets, per shot seed) and the per-image zero-shot scores of
``benchmarks/zero_shot.py`` JSONs (``--zero-shot``; one batch per category: the full test set). Images are joined
by their type folder and file name where the zero-shot JSON names them, else by their order, which must then
give the same labels and types (older JSONs).

Image AUROC only: the fused score has no calibrated threshold yet (the few-shot thresholds come from the good
shots' leave-one-out scores, which have no zero-shot score), so no verdict rates.

Usage (from the repository root):
    python -m benchmarks.batch_fusion --work CACHE/levers --seeds 0,1,2 \\
        --zero-shot benchmarks/results/issue11_zero_shot_references_full.json \\
        --json benchmarks/results/issue11_batch_fusion_full.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:          # run as a script: make `models` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

from benchmarks._sweep import Setting, SweepData, derive  # noqa: E402
from benchmarks.levers import BASE  # noqa: E402
from models.detectors.zero_shot import MAD_TO_SIGMA  # noqa: E402
from models.evaluation import image_auroc  # noqa: E402
from models.files import atomic_write  # noqa: E402


def rank_mean(*scores: np.ndarray) -> np.ndarray:
    """The mean of each score's rank in the batch, in (0, 1]."""
    return np.mean([rankdata(s) / len(s) for s in scores], axis=0)


def robust_z_sum(*scores: np.ndarray) -> np.ndarray:
    """The sum of each score standardised by the batch's median and MAD (a spread of 0 counts as 1e-12)."""
    out = np.zeros(len(scores[0]), dtype=np.float64)
    for s in scores:
        median = float(np.median(s))
        out += (s - median) / max(MAD_TO_SIGMA * float(np.median(np.abs(s - median))), 1e-12)
    return out


FUSIONS: Final = {"rank mean": rank_mean, "robust-z sum": robust_z_sum}


def image_name(path: Path | str) -> str:
    """How the zero-shot JSON names an image: its type folder and file name."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def joined_scores(data: SweepData, zero_shot: list[dict[str, Any]]) -> np.ndarray:
    """The zero-shot scores in the order of ``data.items``.

    Raises:
        ValueError: the two do not hold the same images (by name, or by labels and types in order).
    """
    if all("image" in im for im in zero_shot):
        by_name = {im["image"]: float(im["score"]) for im in zero_shot}
        names = [image_name(t.path) for t in data.items]
        missing = [n for n in names if n not in by_name]
        if missing or len(by_name) != len(names):
            msg = f"{data.category}: the zero-shot batch lacks {len(missing)} of the test images (e.g. {missing[:2]})"
            raise ValueError(msg)
        return np.asarray([by_name[n] for n in names])
    mine = [(t.label, t.defect_type) for t in data.items]
    theirs = [(int(im["label"]), im["defect_type"]) for im in zero_shot]
    if mine != theirs:
        msg = f"{data.category}: the zero-shot batch does not list the test images in the same order"
        raise ValueError(msg)
    return np.asarray([float(im["score"]) for im in zero_shot])


def _zero_shot_runs(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Category -> the full-set zero-shot result with the most references (its per-image scores)."""
    best: dict[str, dict[str, Any]] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        runs = doc.get("runs") or [{"max_references": None, "results": doc.get("results", [])}]
        for run in runs:
            for row in run["results"]:
                if not row["batch"].startswith("subset") or row.get("images") is None:
                    continue
                refs = row.get("config", {}).get("max_references") or run.get("max_references") or 0
                # 200 = every other image of these batches (the former default): not more evidence than 64
                rank = (len(row["images"]), refs if refs <= 64 else 0)
                name = row["category"]
                if name not in best or rank > best[name]["_rank"]:
                    best[name] = {**row, "_rank": rank, "_refs": refs, "_source": path.name}
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="benchmarks/levers.py's collected distances")
    p.add_argument("--categories", default="mvtec_transistor,visa_fryum,mtd_magnetic_tile")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the 16-shot choice")
    p.add_argument("--zero-shot", type=Path, nargs="+", required=True, help="benchmarks/zero_shot.py JSONs")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.categories.split(",") if n.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    zero = _zero_shot_runs(args.zero_shot)
    rows: dict[str, dict[str, Any]] = {}
    print("| category | seed | few-shot | zero-shot (references) | " + " | ".join(FUSIONS) + " | Spearman |")
    print("|---" * (5 + len(FUSIONS)) + "|")
    for name in names:
        for seed in seeds:
            path = args.work / f"{name}_shots16_seed{seed}_test0s1.pt"
            if not path.is_file() or name not in zero:
                print(f"| {name} | {seed} | not collected |")
                continue
            data: SweepData = torch.load(path, weights_only=False)
            labels = np.asarray([t.label for t in data.items])
            few = derive(data, Setting(**BASE), maps=False)[0].astype(np.float64)
            zs = joined_scores(data, zero[name]["images"])
            row = {"few_shot": image_auroc(few, labels), "zero_shot": image_auroc(zs, labels),
                   "zero_shot_references": zero[name]["_refs"], "zero_shot_source": zero[name]["_source"],
                   "spearman": float(spearmanr(few, zs).statistic), "n_test": len(labels),
                   **{f: image_auroc(fn(few, zs), labels) for f, fn in FUSIONS.items()}}
            rows.setdefault(name, {})[str(seed)] = row
            print(f"| {name} | {seed} | {row['few_shot']:.3f} | {row['zero_shot']:.3f} ({row['zero_shot_references']}) "
                  "| " + " | ".join(f"{row[f]:.3f}" for f in FUSIONS) + f" | {row['spearman']:.2f} |", flush=True)
    summary: dict[str, Any] = {}
    for key in ("few_shot", "zero_shot", *FUSIONS):
        per_cat = {n: float(np.mean([r[key] for r in rows[n].values()])) for n in rows}
        summary[key] = {"per_category": per_cat, "mean": float(np.mean(list(per_cat.values()))) if per_cat else None}
        print(f"{key}: mean {summary[key]['mean']:.3f} " + " ".join(f"{n} {v:.3f}" for n, v in per_cat.items()))
    if args.json:
        env = {"few_shot": {"scoring": "today's default (block 8, k=1, top 1 %, sigma 4, masking auto, r=1), 16 shots",
                            "collected_by": "python -m benchmarks.levers --limit-test 0 --collect-only"},
               "seeds": seeds, "fusions": list(FUSIONS),
               "command": "python -m benchmarks.batch_fusion " + " ".join(sys.argv[1:] if argv is None else argv)}
        atomic_write(args.json, json.dumps({"env": env, "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
