"""The summary table of ``benchmarks.accuracy``: mean and spread over shot seeds, ours beside the peer.

Rows are (category, shots) plus a dev-mean row per shots setting; columns are image AUROC and AUPRO
(mean +- sample standard deviation over the seeds) of ours and of each peer block, then ours'
operating point at the thresholds calibrated from the good shots alone (``models.calibration
.operating_point``): shares of defects and of good parts flagged (REVIEW or FAIL) and failed, mean
over the seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["RATES", "markdown_table", "summarise"]

RATES = ("defect_flag_rate", "good_flag_rate", "defect_fail_rate", "good_fail_rate")


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def summarise(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group the per-seed results by (category, setting, detector) into means and spreads.

    Args:
        results: ``{"category", "setting", "detector", "seed", "report": EvalReport.to_dict()}`` entries.

    Returns:
        One dict per (category, setting, detector): ``seeds``, ``image_auroc`` / ``aupro`` as
        ``[mean, sd]``, and for each operating-point rate ``[mean, sd]`` (NaN when not calibrated).
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["category"], r["setting"], r["detector"]), []).append(r["report"])
    out = []
    for (category, setting, detector), reports in groups.items():
        row: dict[str, Any] = {"category": category, "setting": setting, "detector": detector,
                               "seeds": [rep["seed"] for rep in reports]}
        for key in ("image_auroc", "aupro"):
            row[key] = list(_mean_sd([rep[key] for rep in reports]))
        for key in RATES:
            row[key] = list(_mean_sd([rep.get("operating_point", {}).get(key, math.nan) for rep in reports]))
        out.append(row)
    return out


def _cell(pair: Sequence[float], *, percent: bool = False) -> str:
    mean, sd = pair
    if not math.isfinite(mean):
        return "-"
    if percent:
        return f"{100 * mean:.0f} %"
    return f"{mean:.3f} +- {sd:.3f}"


def markdown_table(summary: list[dict[str, Any]], *, detectors: Sequence[str]) -> str:
    """The summary as a markdown table, with a "dev mean" row per setting (mean over the categories, only
    when every category has that detector and setting).

    Args:
        summary: from ``summarise``.
        detectors: the detector labels, ours first (e.g. ``["ours", "peer b8", "peer b12"]``); the
            operating-point columns are the first detector's.
    """
    by_key = {(r["category"], r["setting"], r["detector"]): r for r in summary}
    categories = list(dict.fromkeys(r["category"] for r in summary))
    settings = list(dict.fromkeys(r["setting"] for r in summary))

    def find(category: str, setting: str, detector: str) -> dict[str, Any] | None:
        if category != "dev mean":
            return by_key.get((category, setting, detector))
        present = [by_key[(c, setting, detector)] for c in categories if (c, setting, detector) in by_key]
        if len(present) < len(categories):
            return None
        return {k: [statistics.fmean(p[k][0] for p in present), math.nan] for k in ("image_auroc", "aupro", *RATES)}

    head = ["category", "shots"]
    for d in detectors:
        head += [f"{d} img AUROC", f"{d} AUPRO"]
    head += ["defects flagged", "good flagged", "defects FAIL", "good FAIL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting in settings:
        for category in [*categories, "dev mean"]:
            cells = [category, setting]
            for d in detectors:
                row = find(category, setting, d)
                if row is None:
                    cells += ["-", "-"]
                elif category == "dev mean":
                    cells += [f"{row['image_auroc'][0]:.3f}", f"{row['aupro'][0]:.3f}"]
                else:
                    cells += [_cell(row["image_auroc"]), _cell(row["aupro"])]
            ours = find(category, setting, detectors[0])
            cells += [_cell(ours[k], percent=True) for k in RATES] if ours else ["-"] * len(RATES)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
