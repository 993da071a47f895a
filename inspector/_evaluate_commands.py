"""``inspector evaluate``: accuracy, the operating point and defect typing on an MVTec-AD-layout folder.

The detector is taught as ``inspector train`` teaches it: by default the configuration is chosen from the
good shots (`models.self_tune`), since that is the model a station runs; ``--fixed-config`` measures the
recipe defaults as written.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from inspector.errors import InspectorError


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Accuracy on an MVTec-AD-layout category: image AUROC, pixel AUROC, AUPRO, F1, ms per image."""
    from inspector.recipe import DetectorSettings
    from models.backbone import create_backbone
    from models.detectors import PatchKNNConfig, create_detector
    from models.evaluation import Detector, evaluate, load_category
    from models.weights import resolve_weights

    if args.types is not None:
        return _evaluate_types(args)
    category = load_category(args.category)
    defaults = DetectorSettings()          # what a fresh recipe uses: the measured defaults
    resolved = resolve_weights(defaults.backbone, args.weights)
    config = PatchKNNConfig.from_dict(dict(defaults.options))
    backbone = create_backbone(defaults.backbone, state_dict=resolved.state_dict, blocks=tuple(defaults.blocks),
                               device=args.device or "auto")
    taught: dict[str, Any] | None = None
    if args.zero_shot:
        from models.detectors.zero_shot import evaluate_zero_shot

        report = evaluate_zero_shot(backbone, category, progress=_tqdm_progress("zero-shot"))
    else:
        config, taught = _taught_config(args, category.train_good, config, lambda: backbone,
                                        key=_cache_key(defaults, resolved, config))
        # create_detector is typed nn.Module (the registry's type); patch_knn is a Detector
        report = evaluate(lambda: cast(Detector, create_detector("patch_knn", backbone=backbone, config=config)),
                          category, shots=args.shots or None, seed=args.seed, progress=_tqdm_progress("evaluating"))
    data = report.to_dict()
    data["weights"] = dataclasses.asdict(resolved.info)
    if taught is not None:
        data["self_tune"] = taught
    print(f"{category.name}: image AUROC {data['image_auroc']:.4f}  pixel AUROC {data['pixel_auroc']:.4f}  "
          f"AUPRO {data['aupro']:.4f}  F1 {data['f1']:.4f}  {data['ms_per_image']:.1f} ms/image  "
          f"({data.get('n_train', 0)} train, {data['n_test']} test)")
    point = data.get("operating_point") or {}
    if point:
        data.update({k: point[k] for k in OPERATING_RATES})
        print(_operating_point_line(point))
    if args.json:
        _write_json(args.json, data)
    return 0


# The four operating-point rates that `inspector evaluate --json` writes at the top level too.
OPERATING_RATES = ("defect_flag_rate", "good_flag_rate", "defect_fail_rate", "good_fail_rate")


def _operating_point_line(point: dict[str, Any]) -> str:
    """One summary line: the evaluation's rates at the calibrated thresholds, per defect type, and the outlook."""
    def pct(value: float) -> str:
        return "n/a" if value != value else f"{100 * value:.0f} %"   # NaN: no image of that kind

    per_type = ", ".join(f"{name} {pct(v['flag_rate'])}/{pct(v['fail_rate'])}"
                         for name, v in point.get("per_defect_type", {}).items())
    line = (f"at the calibrated thresholds: defects flagged {pct(point['defect_flag_rate'])} "
            f"(FAIL {pct(point['defect_fail_rate'])}), good flagged {pct(point['good_flag_rate'])} "
            f"(FAIL {pct(point['good_fail_rate'])})")
    outlook = point.get("expected_good_flag")
    if outlook:
        line += (f"; teaching expected good flagged {'' if outlook['exact'] else 'at most '}{pct(outlook['expected'])} "
                 f"(<= {pct(outlook['upper'])} at {100 * outlook['confidence']:g} %)")
    return line + (f"; per type flagged/FAIL: {per_type}" if per_type else "")


def _evaluate_types(args: argparse.Namespace) -> int:
    """``inspector evaluate --types N``: few-shot defect typing accuracy (models.type_evaluation)."""
    from inspector.recipe import DefectTypingSettings, DetectorSettings
    from models.backbone import create_backbone
    from models.defect_types import MAX_CROP_SIDE, MIN_CROP_SIDE, DefectTypeConfig
    from models.detectors import PatchKNNConfig, create_detector
    from models.evaluation import load_category
    from models.type_evaluation import evaluate_defect_types
    from models.weights import resolve_weights

    defaults = DetectorSettings()
    resolved = resolve_weights(defaults.backbone, args.weights)
    config = PatchKNNConfig.from_dict(dict(defaults.options))
    backbones: list[Any] = []         # built once, when something is not cached

    def backbone() -> Any:
        if not backbones:
            backbones.append(create_backbone(defaults.backbone, state_dict=resolved.state_dict,
                                             blocks=tuple(defaults.blocks), device=args.device or "auto"))
        return backbones[0]

    config, taught = _taught_config(args, load_category(args.category).train_good, config, backbone,
                                    key=_cache_key(defaults, resolved, config))

    def make_detector() -> Any:
        return create_detector("patch_knn", backbone=backbone(), config=config)

    key = _cache_key(defaults, resolved, config)
    colour = DefectTypingSettings().colour_weight if args.type_colour_weight is None else args.type_colour_weight
    if not (math.isfinite(colour) and colour >= 0):
        msg = f"--type-colour-weight must be a finite number >= 0 (0 = features only), got {colour}"
        raise InspectorError(msg)
    side = DefectTypingSettings().crop_side if args.type_crop_side is None else args.type_crop_side
    if side != 0 and not MIN_CROP_SIDE <= side <= MAX_CROP_SIDE:
        msg = f"--type-crop-side must be 0 (off) or from {MIN_CROP_SIDE} to {MAX_CROP_SIDE} pixels, got {side}"
        raise InspectorError(msg)
    scope = DefectTypingSettings().scope if args.type_scope is None else args.type_scope
    start = time.perf_counter()
    report = evaluate_defect_types(make_detector, args.category, n_labelled=args.types,
                                   shots=args.shots or None, seed=args.seed, repeats=args.type_repeats,
                                   config=DefectTypeConfig(colour_weight=colour, crop_side=side, scope=scope),
                                   cache_dir=args.cache, cache_key=key, max_per_type=args.type_max_images,
                                   draw_seed=args.type_draw_seed, progress=_tqdm_progress("typing"))
    data: dict[str, Any] = {"defect_type_accuracy": report.accuracy, **report.to_dict(),
                            "weights": dataclasses.asdict(resolved.info), "wall_s": time.perf_counter() - start,
                            "self_tune": taught,
                            "command": "inspector evaluate " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])}
    print(f"{report.category}: defect type accuracy {report.accuracy:.3f} (balanced {report.balanced_accuracy:.3f}), "
          f"unknown {report.unknown_share:.3f}, {report.n_types} types, {report.n_labelled} labelled per type, "
          f"{report.n_typed_per_draw} typed per draw x {len(report.seeds)} draws; a type left unlabelled is "
          f"typed unknown {100 * report.novel_unknown_share:.0f} % of the time")
    for name, acc in sorted(report.per_type.items()):
        print(f"  {name:<28} {acc:.3f}")
    if args.json:
        _write_json(args.json, data)
    return 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    print(f"wrote {path}")


def _cache_key(defaults: Any, resolved: Any, config: Any) -> str:
    """What makes a detector's features and maps what they are: the weights, the backbone and its options."""
    return json.dumps([resolved.info.sha256, defaults.backbone, list(defaults.blocks), config.to_dict()],
                      sort_keys=True)


def _taught_config(args: argparse.Namespace, train_good: Sequence[Path], config: Any, backbone: Callable[[], Any], *,
                   key: str) -> tuple[Any, dict[str, Any] | None]:
    """The configuration ``inspector train`` would ship for this seed's good shots, and what self-tuning said.

    ``config`` as written with ``--fixed-config`` (None: nothing said). Otherwise `models.self_tune` chooses from
    the shots, as teaching does (no recipe: nothing pinned, no cycle-time budget); with ``--cache`` the choice
    is kept there (``CATEGORY-taught-HASH.json``), since a rerun on the same shots and candidates would choose
    the same.
    ``backbone``: gives the detector's backbone (called only when self-tuning runs).
    """
    from models.detectors import PatchKNN
    from models.evaluation import load_image_rgb, select_shots
    from models.self_tune import MIN_IMAGES, candidates_for, self_tune

    if args.fixed_config:
        return config, None
    paths = select_shots(train_good, args.shots or None, seed=args.seed)
    if len(paths) < MIN_IMAGES:
        note = f"not self-tuned: it needs at least {MIN_IMAGES} good images, got {len(paths)}"
        print(f"as written: {note}")
        return config, {"note": note}
    candidates = candidates_for(config, load_image_rgb(paths[0]).shape[:2], len(paths))
    # the candidates are part of the key: a choice kept from another list of candidates is not this one's
    offered = [[c.name, c.options] for c in candidates]
    digest = hashlib.sha256(json.dumps([key, [p.name for p in paths], offered]).encode()).hexdigest()[:16]
    memo = args.cache / f"{args.category.name}-taught-{digest}.json" if args.cache is not None else None
    said: dict[str, Any] | None = None
    if memo is not None and memo.is_file():
        try:
            said = json.loads(memo.read_text(encoding="utf-8"))
            said = said if isinstance(said, dict) and {"options", "reason"} <= said.keys() else None
        except (OSError, ValueError):
            said = None
        if said is None:
            print(f"{memo}: not a kept self-tuning choice (damaged?); tuning again", file=sys.stderr)
    if said is None:
        images = [load_image_rgb(p) for p in paths]
        result = self_tune(images, lambda cfg, bb: PatchKNN(backbone=bb, config=cfg), config, candidates, backbone(),
                           progress=_tqdm_progress("self-tuning"), seed=0)
        said = {"chosen": result.chosen.name, "options": result.chosen.options, "reason": result.reason}
        if memo is not None:
            memo.parent.mkdir(parents=True, exist_ok=True)
            memo.write_text(json.dumps(said, indent=2), encoding="utf-8")
    print(f"as taught: {said['reason']}")
    return dataclasses.replace(config, **said["options"]), said


def _tqdm_progress(desc: str) -> Any:
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    def progress(done: int, total: int, *rest: Any) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return progress


