"""Sweep region descriptors, classifiers and "unknown" rules for few-shot defect typing, on cached features.

Reads what ``benchmarks/type_features.py`` extracted (the anomaly map and all 12 blocks' raw patch
tokens of every defect image; the good shots' tokens). The region is the one the product types: the
largest region at the calibrated pixel threshold (``models.type_evaluation.largest_region_box``),
its per-pixel weights from ``region_weights``, averaged over the patch grid with ``frame_to_grid``.
Each variant is scored as ``inspector evaluate --types N`` scores: N labelled images per type, a
seeded draw per seed, top-1 accuracy of the rest ("unknown" counts as wrong), and each type held out
of the labelling in turn for the share of its images typed "unknown".

Usage:
    python -m benchmarks.type_variants --features /tmp/typefeat --seeds 100-119 --json OUT.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.defect_types import region_weights  # noqa: E402
from models.preprocess import frame_to_grid  # noqa: E402
from models.type_evaluation import labelled_draw, largest_region_box  # noqa: E402

BLOCKS_KEPT = (6, 8, 9, 10, 11, 12)


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


@dataclass
class Item:
    defect_type: str
    weights: np.ndarray                  # (m,) patch weights of the region's patches
    feats: dict[int, np.ndarray]         # block -> (m, D) unit patch features inside the region
    resid: dict[int, np.ndarray]         # block -> (m, D) feature minus its nearest good-bank patch
    image_mean: dict[int, np.ndarray]    # block -> (D,) mean unit feature of the whole image
    shape: np.ndarray                    # cheap region geometry (see _shape)
    extra: dict[str, Any] = field(default_factory=dict)


def _shape(amap: np.ndarray, box: tuple[int, int, int, int], threshold: float) -> np.ndarray:
    x, y, w, h = box
    height, width = amap.shape
    inside = amap[y:y + h, x:x + w] >= threshold
    ys, xs = np.nonzero(inside)
    if ys.size < 2:
        ys, xs = np.array([0.0, 1.0]), np.array([0.0, 1.0])
    cov = np.cov(np.stack([xs.astype(float), ys.astype(float)]))
    ev = np.sort(np.linalg.eigvalsh(cov + 1e-6 * np.eye(2)))
    area = ys.size / float(height * width)
    cx, cy = (x + xs.mean()) / width, (y + ys.mean()) / height
    scores = amap[y:y + h, x:x + w][inside] if inside.any() else amap[y:y + h, x:x + w].ravel()
    return np.array([np.log(area + 1e-6), 0.5 * np.log(ev[1] / ev[0]), cx, cy, np.log(max(w, 1) / max(h, 1)),
                     np.log(float(scores.mean()) / threshold + 1e-6), np.log(float(scores.max()) / threshold + 1e-6),
                     ys.size / float(max(w * h, 1))])


def load_category(folder: Path) -> tuple[dict[str, Any], list[Item]]:
    meta = json.loads((folder / "meta.json").read_text())
    shorter = int(meta["shorter_side"])
    train = [np.load(p).astype(np.float32) for p in sorted(folder.glob("train_*.npy"))]     # (h, w, 12, D)
    banks = {b: np.concatenate([_unit(t[:, :, b - 1, :]).reshape(-1, t.shape[-1]) for t in train])
             for b in BLOCKS_KEPT}
    items: list[Item] = []
    for entry in meta["items"]:
        with np.load(folder / f"{entry['name']}.npz") as data:
            tokens = data["tokens"].astype(np.float32)
            amap = data["anomaly_map"].astype(np.float32)
        box, threshold, _ = largest_region_box(amap, float(meta["pixel_threshold"]))
        weights = region_weights(amap, box=box, pixel_threshold=threshold)
        h, w = tokens.shape[:2]
        grid = frame_to_grid(weights, (h, w), shorter_side=shorter)
        if not np.any(grid > 0):
            ys, xs = np.nonzero(weights)
            grid = np.zeros((h, w), np.float32)
            gy, gx = int(ys.mean() / weights.shape[0] * h), int(xs.mean() / weights.shape[1] * w)
            grid[min(h - 1, gy), min(w - 1, gx)] = 1
        mask = grid > 0
        feats, resid, means = {}, {}, {}
        for b in BLOCKS_KEPT:
            unit = _unit(tokens[:, :, b - 1, :])
            f = unit[mask]
            nn = np.argmax(f @ banks[b].T, axis=1)
            feats[b], resid[b] = f, f - banks[b][nn]
            means[b] = unit.reshape(-1, unit.shape[-1]).mean(axis=0)
        items.append(Item(entry["defect_type"], grid[mask], feats, resid, means, _shape(amap, box, threshold)))
    return meta, items


# --------------------------------------------------------------------------- descriptors

def describe(item: Item, spec: dict[str, Any]) -> np.ndarray:
    """One region's descriptor for a variant ``spec`` (blocks, source, pooling, weighting)."""
    parts = []
    w = item.weights if spec.get("weighting", "anomaly") == "anomaly" else (item.weights > 0).astype(np.float32)
    if spec.get("weighting") == "anomaly2":
        w = item.weights ** 2
    w = w / w.sum()
    for b in spec["blocks"]:
        for source in spec.get("sources", ("feat",)):
            x = item.feats[b] if source == "feat" else item.resid[b]
            pooled = [_unit(w @ x)]
            if spec.get("pool") == "mean+max":
                pooled.append(_unit(x.max(axis=0)))
            if spec.get("minus_image"):
                pooled[0] = _unit(w @ x - spec["minus_image"] * item.image_mean[b]) if source == "feat" else pooled[0]
            parts.extend(pooled)
    return _unit(np.concatenate(parts))


# --------------------------------------------------------------------------- classifiers

def _lda_fit(x: np.ndarray, y: np.ndarray, n_classes: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Shrinkage LDA in closed form (Woodbury; d >> n): returns (W (C, d), b (C,))."""
    means = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])
    z = (x - means[y]) / np.sqrt(len(x))
    d = x.shape[1]
    s_trace = float((z * z).sum())
    a = alpha * s_trace / d + 1e-8          # Sigma = a I + (1 - alpha) Z^T Z
    bcoef = 1.0 - alpha
    small = np.linalg.inv((a / bcoef) * np.eye(len(z)) + z @ z.T) if bcoef > 0 else np.zeros((len(z), len(z)))
    inv_means = (means - (means @ z.T) @ small @ z) / a   # Sigma^-1 mu_c
    bias = -0.5 * (inv_means * means).sum(axis=1)
    return inv_means, bias


def classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int,
             spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Returns (predicted class (N,), distance to the predicted class (N,), cosine in [0, 2])."""
    kind = spec.get("classifier", "nn1")
    if spec.get("centre"):
        centre = train_x.mean(axis=0)
        train_x, test_x = _unit(train_x - centre), _unit(test_x - centre)
    dists = 1.0 - test_x @ train_x.T
    per_class = np.full((len(test_x), n_classes), np.inf)
    for c in range(n_classes):
        dc = dists[:, train_y == c]
        if kind == "nn1":
            per_class[:, c] = dc.min(axis=1)
        elif kind.startswith("knn"):
            k = min(int(kind[3:]), dc.shape[1])
            per_class[:, c] = np.sort(dc, axis=1)[:, :k].mean(axis=1)
        elif kind in ("proto", "lda"):
            proto = _unit(train_x[train_y == c].mean(axis=0))
            per_class[:, c] = 1.0 - test_x @ proto
    if kind == "lda":
        weights, bias = _lda_fit(train_x, train_y, n_classes, spec.get("alpha", 0.5))
        pred = np.argmax(test_x @ weights.T + bias, axis=1)
    else:
        pred = np.argmin(per_class, axis=1)
    return pred, per_class[np.arange(len(test_x)), pred]


def loo_thresholds(train_x: np.ndarray, train_y: np.ndarray, n_classes: int, spec: dict[str, Any]) -> np.ndarray:
    """Per class: its labelled examples' leave-one-out distances to their own class (conformal scores)."""
    out = np.full(n_classes, np.inf)
    pooled: list[float] = []
    per: dict[int, list[float]] = {}
    for i in range(len(train_x)):
        keep = np.arange(len(train_x)) != i
        if not np.any(train_y[keep] == train_y[i]):
            continue
        own = _own_distance(train_x[keep], train_y[keep], train_x[i], int(train_y[i]), spec)
        per.setdefault(int(train_y[i]), []).append(own)
    q = spec.get("reject_quantile", 1.0)
    for c, values in per.items():
        out[c] = float(np.quantile(values, q))
        pooled.extend(values)
    if spec.get("reject_pooled"):
        out[:] = float(np.quantile(pooled, q)) if pooled else np.inf
    return out * spec.get("reject_factor", np.inf)


def _own_distance(x: np.ndarray, y: np.ndarray, q: np.ndarray, c: int, spec: dict[str, Any]) -> float:
    if spec.get("centre"):
        centre = x.mean(axis=0)
        x, q = _unit(x - centre), _unit(q - centre)
    members = x[y == c]
    kind = spec.get("classifier", "nn1")
    if kind in ("proto", "lda"):
        return float(1.0 - q @ _unit(members.mean(axis=0)))
    d = 1.0 - members @ q
    k = 1 if kind == "nn1" else min(int(kind[3:]), len(d))
    return float(np.sort(d)[:k].mean())


def run(items: list[Item], spec: dict[str, Any], *, n_labelled: int, seeds: list[int],
        novel: bool = False) -> dict[str, Any]:
    types = sorted({it.defect_type for it in items})
    y_all = np.array([types.index(it.defect_type) for it in items])
    x_vis = np.stack([describe(it, spec) for it in items])
    shape_all = np.stack([it.shape for it in items])
    acc, unk, nov, per_draw = [], [], [], []
    per_type: dict[str, list[bool]] = {t: [] for t in types}
    for seed in seeds:
        labelled = labelled_draw([it.defect_type for it in items], n_labelled, seed)   # the product's draw
        lab = np.array(sorted(labelled))
        test = np.array([i for i in range(len(items)) if i not in labelled])
        x = x_vis
        if spec.get("shape_weight"):
            mu, sd = shape_all[lab].mean(axis=0), shape_all[lab].std(axis=0) + 1e-3
            z = (shape_all - mu) / sd / np.sqrt(shape_all.shape[1])
            x = _unit(np.concatenate([x_vis, spec["shape_weight"] * z], axis=1))
        pred, dist = classify(x[lab], y_all[lab], x[test], len(types), spec)
        reject = loo_thresholds(x[lab], y_all[lab], len(types), spec) if "reject_factor" in spec else None
        unknown = dist > reject[pred] if reject is not None else np.zeros(len(test), bool)
        right = (pred == y_all[test]) & ~unknown
        acc.append(float(right.mean()))
        unk.append(float(unknown.mean()))
        for i, ok in zip(test, right, strict=True):
            per_type[types[y_all[i]]].append(bool(ok))
        if novel and reject is not None:
            for c in range(len(types)):
                keep = lab[y_all[lab] != c]
                held = test[y_all[test] == c]
                remap = {old: new for new, old in enumerate(sorted(set(y_all[keep].tolist())))}
                yk = np.array([remap[v] for v in y_all[keep]])
                p2, d2 = classify(x[keep], yk, x[held], len(remap), spec)
                r2 = loo_thresholds(x[keep], yk, len(remap), spec)
                nov.append(float((d2 > r2[p2]).mean()))
        per_draw.append(acc[-1])
    return {"accuracy": float(np.mean(acc)), "accuracy_per_draw": per_draw, "unknown_share": float(np.mean(unk)),
            "novel_unknown_share": float(np.mean(nov)) if nov else None,
            "per_type": {t: float(np.mean(v)) for t, v in per_type.items()}}


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


VARIANTS: dict[str, dict[str, Any]] = {
    "base (b8 anomaly-weighted mean, 1-NN)": {"blocks": (8,)},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=Path, default=Path("/tmp/typefeat"))
    p.add_argument("--categories", default="mvtec_transistor,visa_fryum,mtd_magnetic_tile")
    p.add_argument("--seeds", default="100-119")
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--grid", default="stage1")
    p.add_argument("--novel", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    seeds = _seeds(args.seeds)
    data = {}
    for cat in args.categories.split(","):
        folder = args.features / cat
        if (folder / "meta.json").is_file():
            start = time.perf_counter()
            pickled = folder / "items.pkl"      # our own cache of the loaded regions (benchmark only)
            n_items = len(json.loads((folder / "meta.json").read_text())["items"])
            cached = pickle.loads(pickled.read_bytes()) if pickled.is_file() else None
            if cached is not None and len(cached) == n_items:
                data[cat] = cached
            else:
                data[cat] = load_category(folder)[1]
                pickled.write_bytes(pickle.dumps(data[cat]))
            print(f"loaded {cat}: {len(data[cat])} regions in {time.perf_counter() - start:.0f} s", flush=True)
    variants = GRIDS[args.grid]()
    results = []
    for name, spec in variants.items():
        row: dict[str, Any] = {"variant": name, "spec": {k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in spec.items()}}
        for cat, items in data.items():
            row[cat] = run(items, spec, n_labelled=args.n, seeds=seeds, novel=args.novel)
        row["mean"] = float(np.mean([row[c]["accuracy"] for c in data]))
        cells = "  ".join(f"{c[:10]} {row[c]['accuracy']:.3f}" + (f"/u{row[c]['unknown_share']:.2f}"
                          f"/n{row[c]['novel_unknown_share']:.2f}" if row[c]["novel_unknown_share"] is not None else "")
                          for c in data)
        print(f"{row['mean']:.3f}  {cells}  {name}", flush=True)
        results.append(row)
    if args.json:
        args.json.write_text(json.dumps({"seeds": seeds, "n_labelled": args.n, "results": results}, indent=1))
    return 0


def _stage1() -> dict[str, dict[str, Any]]:
    v: dict[str, dict[str, Any]] = {}
    for blocks in [(8,), (6,), (9,), (10,), (11,), (12,), (8, 11), (8, 12), (8, 10, 12), (6, 8, 10, 12)]:
        v[f"b{blocks} feat nn1"] = {"blocks": blocks}
        v[f"b{blocks} resid nn1"] = {"blocks": blocks, "sources": ("resid",)}
        v[f"b{blocks} feat+resid nn1"] = {"blocks": blocks, "sources": ("feat", "resid")}
    return v


def _stage2() -> dict[str, dict[str, Any]]:
    v: dict[str, dict[str, Any]] = {}
    for blocks, sources in itertools.product([(8,), (12,), (8, 12), (8, 11)],
                                             [("feat",), ("resid",), ("feat", "resid")]):
        base = {"blocks": blocks, "sources": sources}
        tag = f"b{blocks} {'+'.join(sources)}"
        for clf in ["nn1", "knn3", "proto", "lda"]:
            v[f"{tag} {clf}"] = {**base, "classifier": clf}
            v[f"{tag} {clf} centred"] = {**base, "classifier": clf, "centre": True}
    return v


def _stage3() -> dict[str, dict[str, Any]]:
    v: dict[str, dict[str, Any]] = {}
    for clf, centre in [("nn1", False), ("proto", True), ("lda", False)]:
        base = {"blocks": (8,), "classifier": clf, "centre": centre}
        tag = f"b8 {clf}{' centred' if centre else ''}"
        v[tag] = base
        v[f"{tag} uniform"] = {**base, "weighting": "uniform"}
        v[f"{tag} anomaly^2"] = {**base, "weighting": "anomaly2"}
        v[f"{tag} mean+max"] = {**base, "pool": "mean+max"}
        v[f"{tag} minus image"] = {**base, "minus_image": 0.5}
        for lam in (0.1, 0.2, 0.4):
            v[f"{tag} shape {lam}"] = {**base, "shape_weight": lam}
    return v


def _lda() -> dict[str, dict[str, Any]]:
    v: dict[str, dict[str, Any]] = {}
    for blocks in [(8,), (8, 11), (8, 12)]:
        for alpha in (0.1, 0.3, 0.5, 0.7, 0.9):
            v[f"b{blocks} lda a{alpha}"] = {"blocks": blocks, "classifier": "lda", "alpha": alpha}
            v[f"b{blocks} lda a{alpha} centred"] = {"blocks": blocks, "classifier": "lda", "alpha": alpha,
                                                    "centre": True}
    return v


def _stage4() -> dict[str, dict[str, Any]]:
    v: dict[str, dict[str, Any]] = {}
    for blocks, sources in itertools.product([(8,), (8, 12), (8, 11)], [("feat",), ("resid",), ("feat", "resid")]):
        base = {"blocks": blocks, "sources": sources, "pool": "mean+max"}
        tag = f"b{blocks} {'+'.join(sources)} mean+max"
        for clf, centre in [("nn1", False), ("knn3", True), ("proto", True), ("proto", False), ("lda", False)]:
            v[f"{tag} {clf}{' centred' if centre else ''}"] = {**base, "classifier": clf, "centre": centre}
    return v


def _unknown() -> dict[str, dict[str, Any]]:
    v: dict[str, dict[str, Any]] = {}
    bases: dict[str, dict[str, Any]] = {"b8 feat mean+max nn1": {"blocks": (8,), "pool": "mean+max"},
             "b8 feat+resid mean+max proto centred": {"blocks": (8,), "pool": "mean+max", "sources": ("feat", "resid"),
                                                      "classifier": "proto", "centre": True},
             "b8 feat mean+max proto centred": {"blocks": (8,), "pool": "mean+max", "classifier": "proto",
                                                "centre": True}}
    for tag, base in bases.items():
        for factor in (1.0, 1.2, 1.5):
            for q in (1.0, 0.8):
                v[f"{tag} reject {factor} x q{q}"] = {**base, "reject_factor": factor, "reject_quantile": q}
                v[f"{tag} reject {factor} x q{q} pooled"] = {**base, "reject_factor": factor, "reject_quantile": q,
                                                              "reject_pooled": True}
    return v


def _short() -> dict[str, dict[str, Any]]:
    v: dict[str, dict[str, Any]] = {"base b8 mean nn1": {"blocks": (8,)}}
    for sources in [("feat",), ("feat", "resid")]:
        for clf, centre in [("nn1", False), ("nn1", True), ("knn3", True), ("proto", True), ("lda", False)]:
            v[f"b8 {'+'.join(sources)} mean+max {clf}{' centred' if centre else ''}"] = {
                "blocks": (8,), "sources": sources, "pool": "mean+max", "classifier": clf, "centre": centre}
    return v


def _final() -> dict[str, dict[str, Any]]:
    v: dict[str, dict[str, Any]] = {"base: b8 mean nn1": {"blocks": (8,)},
                                    "b8 mean nn1 centred": {"blocks": (8,), "centre": True}}
    for sources in [("feat",), ("feat", "resid")]:
        for clf, centre in [("nn1", False), ("nn1", True), ("knn3", False), ("knn3", True), ("knn2", True)]:
            v[f"b8 {'+'.join(sources)} mean+max {clf}{' centred' if centre else ''}"] = {
                "blocks": (8,), "sources": sources, "pool": "mean+max", "classifier": clf, "centre": centre}
    v["ref: b12 feat+resid nn1 (needs block 12)"] = {"blocks": (12,), "sources": ("feat", "resid")}
    v["ref: b8+12 resid knn3 centred mean+max (needs block 12)"] = {
        "blocks": (8, 12), "sources": ("resid",), "pool": "mean+max", "classifier": "knn3", "centre": True}
    return v


def _final_unknown() -> dict[str, dict[str, Any]]:
    base = {"blocks": (8,), "sources": ("feat", "resid"), "pool": "mean+max", "classifier": "knn2", "centre": True}
    v: dict[str, dict[str, Any]] = {}
    for factor in (1.0, 1.25, 1.5, 2.0):
        v[f"winner, reject {factor} x max per type"] = {**base, "reject_factor": factor, "reject_quantile": 1.0}
    v["winner, reject 1.25 x max pooled"] = {**base, "reject_factor": 1.25, "reject_quantile": 1.0,
                                             "reject_pooled": True}
    return v


def _final_shape() -> dict[str, dict[str, Any]]:
    base = {"blocks": (8,), "sources": ("feat", "resid"), "pool": "mean+max", "classifier": "knn2", "centre": True}
    return {f"winner + shape {lam}": {**base, "shape_weight": lam} for lam in (0.0, 0.2, 0.4, 0.8)}


GRIDS = {"final_shape": _final_shape, "final_unknown": _final_unknown, "final": _final, "short": _short,
         "unknown": _unknown, "stage4": _stage4, "stage1": _stage1, "stage2": _stage2, "stage3": _stage3, "lda": _lda}

if __name__ == "__main__":
    raise SystemExit(main())
