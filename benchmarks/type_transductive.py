"""Typing with the unlabelled regions too: label spreading and self-training beside the product's k-NN.

A station's store holds many more untyped regions of a recipe than reviewers label. Few-shot classification
gains where the unlabelled examples show the shape of each type's cluster (transductive inference). This reads
the cache of ``inspector evaluate DATA/CAT --types 5 --cache CACHE`` (the product's embeddings, as
``benchmarks/type_labels.py`` builds them: frame scope, crop pass, colour), draws 5 labelled images per type as
the product's evaluation does, and types every other defect image's largest region:

- ``knn``: the product's classifier without spreading (``spread_alpha=0``), the labelled examples only;
- ``spread a=A k=K``: label spreading (Zhou et al. 2004) over the labelled and the unlabelled embeddings in the
  classifier's own compared space (colour joined, centred on the labelled mean): a K-nearest-neighbour graph of
  cosine similarities (clipped at 0, cubed: Iscen et al. 2019), symmetric, normalised; F = (I - A S)^-1 Y;
- ``self R``: the product's classifier retrained R rounds, each adding as examples the third of the unlabelled
  images it types with the highest confidence (never ``unknown``).

The unlabelled pool here is the images being typed (transductive, one graph per draw); at a station it is the
recipe's earlier regions (`DefectTypeClassifier.add_unlabelled`), each new one joining the graph as it is typed.
``product`` is `DefectTypeClassifier` with its defaults (spreading on, alpha 0.8, k 5), typing the draw's images
in one call: it equals the ``spread a=0.8 k=5`` row where the k-NN does not say ``unknown`` (a test checks it).
``--good-pool N`` adds N good test images' embeddings to every pool (the false alarms a station's pool holds);
``--good-labelled M`` labels M more good images as a class of their own in the spreading rows (never given).

Usage:
    python -m benchmarks.type_transductive --data DATA --cache CACHE --seeds 100-119 --json OUT.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.type_labels import category_embeddings  # noqa: E402
from benchmarks.type_regions import CATEGORIES, N_LABELLED, write_typing_result  # noqa: E402
from benchmarks.type_variants import _seeds  # noqa: E402
from models.defect_types import UNKNOWN, DefectTypeClassifier, DefectTypeConfig, label_spreading  # noqa: E402
from models.type_evaluation import labelled_draw  # noqa: E402

SPREAD = [(0.2, 10), (0.35, 10), (0.5, 5), (0.5, 10), (0.5, 20), (0.8, 5), (0.8, 10), (0.99, 10)]     # (alpha, k) rows
SELF_ROUNDS = (1, 3)


def compared_space(classifier: DefectTypeClassifier, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labelled examples and ``queries`` in the space the classifier measures cosine distances in."""
    held = np.stack([classifier._normalised(q) for q in queries])                 # noqa: SLF001 (a benchmark)
    return classifier._centred(*classifier._with_colour(classifier._vectors, held))  # noqa: SLF001


def good_embeddings(data: Path, cache: Path, category: str, n: int, *, seed: int = 0) -> list[np.ndarray]:
    """The product's frame embeddings of ``n`` good test images (a seeded choice), made as ``inspector evaluate
    --types`` makes the defect images' (same detector, shots, pixel threshold and cache folder: the good images'
    features are cached beside the defects'). A good image with no region at the threshold takes the top 1 % of
    its map, as a defect image would: a pool noisier than a station's, where only flagged parts are typed."""
    import json as _json

    from inspector.recipe import DefectTypingSettings, DetectorSettings
    from models.backbone import create_backbone
    from models.detectors import PatchKNNConfig, create_detector
    from models.evaluation import load_category
    from models.type_evaluation import _extract
    from models.weights import resolve_weights

    defaults, typing = DetectorSettings(), DefectTypingSettings()
    resolved = resolve_weights(defaults.backbone, None)
    config = PatchKNNConfig.from_dict(dict(defaults.options))

    def make_detector() -> Any:
        backbone = create_backbone(defaults.backbone, state_dict=resolved.state_dict, blocks=tuple(defaults.blocks),
                                   device="cpu")
        return create_detector("patch_knn", backbone=backbone, config=config)

    key = _json.dumps([resolved.info.sha256, defaults.backbone, list(defaults.blocks), config.to_dict()],
                      sort_keys=True)                                       # the CLI's cache key
    goods = [t for t in load_category(data / category).test if t.label == 0]
    rng = np.random.default_rng(seed)
    chosen = [goods[i] for i in sorted(rng.choice(len(goods), size=min(n, len(goods)), replace=False))]
    items, _, _ = _extract(make_detector, data / category, chosen, shots=16, seed=0, cache_dir=cache, cache_key=key,
                           progress=None, residual=True, colour=typing.colour_weight > 0, crop_side=typing.crop_side,
                           scope=typing.scope)
    return [item.embedding for item in items]


def _draw(largest: list[np.ndarray], types: list[str], labelled: set[int], cfg: DefectTypeConfig,
          goods: list[np.ndarray] | None = None, known_good: list[np.ndarray] | None = None) -> dict[str, float]:
    examples = sorted(labelled)
    test = [i for i in range(len(types)) if i not in labelled]
    truth = [types[i] for i in test]
    out: dict[str, float] = {}
    product = DefectTypeClassifier(config=cfg)          # its defaults: spreading over the typed regions
    product.add_many([largest[i] for i in examples], [types[i] for i in examples])
    if goods:
        product.add_unlabelled(goods)
    typed = product.predict_many(np.stack([largest[i] for i in test]))
    out["product"] = float(np.mean([p.defect_class == t for p, t in zip(typed, truth, strict=True)]))
    cfg = dataclasses.replace(cfg, spread_alpha=0.0)      # the k-NN alone, and the space the rows below use
    classifier = DefectTypeClassifier(config=cfg)
    classifier.add_many([largest[i] for i in examples], [types[i] for i in examples])
    base = classifier.predict_many(np.stack([largest[i] for i in test]))
    out["knn"] = float(np.mean([p.defect_class == t for p, t in zip(base, truth, strict=True)]))
    names = sorted(set(types[i] for i in examples))
    labels = np.asarray([names.index(types[i]) for i in examples])
    extra = len(goods) if goods else 0
    background = len(known_good) if known_good else 0
    vectors, both = compared_space(classifier, np.stack([*(known_good or []), *(goods or []),
                                                          *(largest[i] for i in test)]))
    if background:         # false alarms a reviewer called good: a class of their own in the graph, never given
        vectors = np.concatenate([vectors, both[:background]])
        labels_bg = np.concatenate([labels, np.full(background, len(names))])
    for alpha, k in SPREAD:
        if background:
            scores = label_spreading(vectors, labels_bg, both[background:], len(names) + 1, alpha=alpha,
                                     k=k)[extra:, :-1]
        else:
            scores = label_spreading(vectors, labels, both, len(names), alpha=alpha, k=k)[extra:]
        picks = list(np.argmax(scores, axis=1))
        out[f"spread a={alpha} k={k}"] = float(np.mean([names[p] == t for p, t in zip(picks, truth, strict=True)]))
    for rounds in SELF_ROUNDS:
        grown = DefectTypeClassifier(config=cfg)
        grown.add_many([largest[i] for i in examples], [types[i] for i in examples])
        left = list(range(len(test)))
        for _ in range(rounds):
            if not left:
                break
            typed = grown.predict_many(np.stack([largest[test[j]] for j in left]))
            ranked = sorted((j for j, p in zip(left, typed, strict=True) if p.defect_class != UNKNOWN),
                            key=lambda j: -typed[left.index(j)].confidence)
            take = ranked[: max(1, len(left) // 3)]
            grown.add_many([largest[test[j]] for j in take], [typed[left.index(j)].defect_class for j in take])
            left = [j for j in left if j not in take]
        final = grown.predict_many(np.stack([largest[i] for i in test]))
        out[f"self {rounds}"] = float(np.mean([p.defect_class == t for p, t in zip(final, truth, strict=True)]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder of MVTec-AD-layout categories")
    p.add_argument("--cache", type=Path, required=True, help="the --cache of `inspector evaluate --types`")
    p.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated names")
    p.add_argument("--seeds", default="100-119", help="draws, e.g. 0-4 or 100-119")
    p.add_argument("--good-pool", type=int, default=0,
                   help="also pool this many good test images' embeddings (false alarms; fits the detector once)")
    p.add_argument("--good-labelled", type=int, default=0,
                   help="and this many more labelled good (a background class in the spreading rows)")
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    args = p.parse_args(argv)
    seeds = _seeds(args.seeds)
    cfg = DefectTypeConfig()
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for category in args.categories.split(","):
        types, largest, _, _ = category_embeddings(args.data, args.cache, category, cfg)
        n_good = args.good_pool + args.good_labelled
        goods = good_embeddings(args.data, args.cache, category, n_good) if n_good else []
        known, pooled = goods[:args.good_labelled], goods[args.good_labelled:]
        draws = [_draw(largest, types, labelled_draw(types, N_LABELLED, seed), cfg, pooled or None, known or None)
                 for seed in seeds]
        results[category] = {name: float(np.mean([d[name] for d in draws])) for name in draws[0]}
        print(category, "  ".join(f"{n}: {v:.3f}" for n, v in results[category].items()), flush=True)
    rows = list(next(iter(results.values())))
    mean = {n: float(np.mean([r[n] for r in results.values()])) for n in rows}
    print("mean", "  ".join(f"{n}: {v:.3f}" for n, v in mean.items()))
    write_typing_result(args.json, "type_transductive", argv, seeds=seeds,
                        classifier="DefectTypeConfig() (the product's)", start=start, categories=results, mean=mean)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
