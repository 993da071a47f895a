"""The handshake registers as `LineSignals` writes them: verdict codes, score x 10,000 clamped, the counter wrapping."""

from __future__ import annotations

import time

from inspector.lineio.signals import LineSignals, Trigger, verdict_code
from inspector.results import DefectRegion, InspectionResult, Verdict


def test_the_answer_registers_score_times_10000_clamped_and_the_counter_wraps() -> None:
    signals = LineSignals(recipe_numbers=frozenset({1}), active_recipe=1)
    region = DefectRegion(x=1, y=1, width=2, height=2, area_px=4, area_mm2=None, max_score=1.0, mean_score=0.5)
    cases = [(Verdict.PASS, 0.01234, (), 123), (Verdict.FAIL, 7.5, (region, region), 65_535),
             (Verdict.REVIEW, -0.2, (region,), 0), (Verdict.ERROR, None, (), 0)]
    for count, (verdict, score, regions, expected) in enumerate(cases, start=65_534):
        signals.write_trigger(count)
        trigger = Trigger(count=count % 65_536, seen=time.monotonic())
        signals.answer(trigger, InspectionResult(frame_id=0, timestamp=0.0, source="s", recipe="r",
                                                 model_version="v1", verdict=verdict, score=score, regions=regions))
        snap = signals.snapshot()
        assert (snap.verdict, snap.score, snap.defects, snap.result) == (
            verdict_code(verdict), expected, len(regions), count % 65_536)
    assert [verdict_code(v) for v in (Verdict.PASS, Verdict.REVIEW, Verdict.FAIL, Verdict.ERROR)] == [1, 2, 3, 4]
