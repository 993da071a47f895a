"""Widgets of the operator's station screen: the live image with its heatmap, the verdict banner,
the strip of recent verdicts, the lot counters and the fault banners.

They take plain data (`InspectionResult`, `LotCounts`, pipeline stats) and paint it; none of them
starts threads or touches the engine. Results may arrive faster than the screen refreshes: each
view only stores the newest one and asks Qt for a repaint, and Qt folds many ``update()`` calls
into one paint per display frame, so only the newest result is ever converted and drawn.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, QSizeF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPaintEvent, QPen, QResizeEvent
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from inspector.controller import LineMetrics
from inspector.results import DefectRegion, InspectionResult, Verdict, VerdictCounts
from ui.qimage import bgr_to_qimage, heatmap_to_qimage

__all__ = [
    "place_label",
    "VERDICT_COLOURS",
    "short_source",
    "FaultBanner",
    "HeatmapView",
    "LotCounts",
    "VerdictBanner",
    "VerdictStrip",
    "YieldPanel",
]

# (background, text) per verdict. Saturated colours with black/white text chosen for contrast
# (WCAG ratio >= 4.5 for each pair) so the banner reads from two metres under factory light.
MAX_LABELS = 5   # region boxes past the five highest-scoring ones are drawn without a size label

VERDICT_COLOURS: dict[str, tuple[str, str]] = {
    Verdict.PASS: ("#0b7a28", "#ffffff"),
    Verdict.REVIEW: ("#ffb300", "#000000"),
    Verdict.FAIL: ("#c40000", "#ffffff"),
    Verdict.ERROR: ("#5e1a8c", "#ffffff"),
    "IDLE": ("#37474f", "#ffffff"),
}


def short_source(text: str) -> str:
    """A source name for the screen: a path inside the working folder is shown relative to it."""
    try:
        path = Path(text)
        if path.is_absolute():
            return str(path.relative_to(Path.cwd()))
    except (ValueError, OSError):
        pass
    return text


def frame_origin(source: str, frame_id: int, path: str | None) -> str:
    """Which frame of its source an inspection was: the image file (inside a folder source, relative to it), else
    the frame's number (a camera, a video)."""
    if not path:
        return f"frame {frame_id}"
    try:
        return f"file {Path(path).relative_to(Path(source))}"
    except ValueError:
        return f"file {short_source(path)}"


LotCounts = VerdictCounts   # the running lot's counts: the project's one `VerdictCounts` (and yield)


def place_label(box: QRectF, size: QSizeF, taken: list[QRectF], bounds: QRectF) -> QRectF | None:
    """Where a region's label goes: below its box, else above, else right of it, else left, inside
    ``bounds`` and clear of the labels already ``taken``; None when no such place is free.

    The regions come highest-scoring first, so on a crowded part the worst defects keep their labels.
    """
    w, h = size.width(), size.height()
    candidates = (QPointF(box.left(), box.bottom() + 2), QPointF(box.left(), box.top() - h - 2),
                  QPointF(box.right() + 2, box.top()), QPointF(box.left() - w - 2, box.top()))
    for corner in candidates:
        spot = QRectF(corner, size)
        # a label running off the image is pulled back inside it (a box at the border)
        spot.moveLeft(min(max(spot.left(), bounds.left()), bounds.right() - w))
        spot.moveTop(min(max(spot.top(), bounds.top()), bounds.bottom() - h))
        if not any(spot.intersects(other) for other in taken):
            return spot
    return None


class HeatmapView(QWidget):
    """The inspected frame, scaled to fit, with the anomaly heatmap over it and defect regions outlined.

    The heatmap can be toggled and its opacity changed without re-rendering the frame. Scores at or
    below ``vmin`` are transparent, at or above ``vmax`` opaque red (`ui.qimage.heatmap_rgba`).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(160, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self._pending: InspectionResult | None = None
        self._shown: InspectionResult | None = None
        self._frame: QImage | None = None
        self._heat: QImage | None = None
        self._heatmap_visible = True
        self._opacity = 0.6
        self._vmin = 0.0
        self._vmax = 1.0
        self._placeholder = "No image yet: choose a source and press Start (F5)"
        self._stale = ""       # when set, the shown frame is not the current one: greyed, with this caption
        self.show_labels = True           # region size / class under each box (off for small tiles)
        self.conversions = 0              # results turned into pixels: at most one per paint

    # -- state ------------------------------------------------------------------------------
    @property
    def heatmap_visible(self) -> bool:
        return self._heatmap_visible

    @property
    def opacity(self) -> float:
        return self._opacity

    @property
    def result(self) -> InspectionResult | None:
        """The newest result given to the view (painted at the next paint tick)."""
        return self._pending or self._shown

    def set_heatmap_visible(self, visible: bool) -> None:
        self._heatmap_visible = bool(visible)
        self.update()

    def set_opacity(self, opacity: float) -> None:
        """Heatmap opacity in [0, 1]."""
        self._opacity = min(max(float(opacity), 0.0), 1.0)
        self.update()

    def set_heat_range(self, vmin: float, vmax: float) -> None:
        """Scores mapped to transparent (``vmin``) and to opaque red (``vmax``)."""
        if not vmax > vmin:
            vmax = vmin + 1e-6
        self._vmin, self._vmax = float(vmin), float(vmax)
        if self._shown is not None and self._pending is None:
            self._pending = self._shown
        self.update()

    @property
    def stale(self) -> str:
        """The caption over a frame that is no longer current ("" while it is current)."""
        return self._stale

    def set_stale(self, caption: str) -> None:
        """Grey the shown frame out under ``caption`` (e.g. "STOPPED · last frame"); "" makes it current."""
        self._stale = caption
        self.update()

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.update()

    def empty_text(self) -> str:
        """What the view says where no frame is drawn: the placeholder before any result, or why the shown
        result has no image (an unreadable file mid-run said "No image yet: ... press Start")."""
        shown = self._pending or self._shown
        if shown is None:
            return self._placeholder
        if shown.verdict is Verdict.ERROR:
            return f"No image of this part: {shown.error or 'it could not be read'}"
        return "No image came with this result"

    def show_result(self, result: InspectionResult | None) -> None:
        """Keep ``result`` as the newest and schedule a repaint (cheap; safe at any rate)."""
        self._pending = result
        self._stale = ""
        if result is None:
            self._shown, self._frame, self._heat = None, None, None
        self.update()

    def show_types(self, typed: InspectionResult) -> None:
        """The defect types of a result already shown (typed after its verdict): its labels now read
        them. A newer frame is never replaced by an older one's types."""
        def same(held: InspectionResult) -> bool:
            return (held.frame_id, held.timestamp, held.source) == (typed.frame_id, typed.timestamp, typed.source)

        if self._pending is not None:       # not painted yet: the newest result waits in _pending
            if same(self._pending):
                self._pending = dataclasses.replace(self._pending, regions=typed.regions)
                self.update()
        elif self._shown is not None and same(self._shown):
            self._shown = dataclasses.replace(self._shown, regions=typed.regions)
            self.update()

    def show_image(self, image_bgr: np.ndarray, anomaly_map: np.ndarray | None = None) -> None:
        """Show a bare frame (teaching, review), optionally with a (H, W) float32 anomaly map."""
        self.show_result(
            InspectionResult(
                frame_id=0, timestamp=0.0, source="", recipe="", model_version="", verdict=Verdict.PASS,
                score=None, anomaly_map=anomaly_map, image_bgr=image_bgr,
            )
        )

    # -- painting ---------------------------------------------------------------------------
    def _convert_pending(self) -> None:
        result, self._pending = self._pending, None
        if result is None:
            return
        self._shown = result
        self.conversions += 1
        self._frame = bgr_to_qimage(result.image_bgr) if result.image_bgr is not None else None
        amap = result.anomaly_map
        self._heat = heatmap_to_qimage(amap, vmin=self._vmin, vmax=self._vmax) if amap is not None else None

    def image_rect(self) -> QRectF:
        """Where the frame is drawn in widget coordinates (aspect ratio kept, centred)."""
        if self._frame is None:
            return QRectF()
        fw, fh = self._frame.width(), self._frame.height()
        scale = min(self.width() / fw, self.height() / fh)
        w, h = fw * scale, fh * scale
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt name)
        if self._pending is not None:
            self._convert_pending()
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#101418"))
        if self._frame is None:
            painter.setPen(QColor("#b0bec5"))
            font = painter.font()
            font.setPointSize(14)
            painter.setFont(font)
            flags = Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap
            painter.drawText(self.rect(), flags, self.empty_text())
            painter.end()
            return
        target = self.image_rect()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawImage(target, self._frame)
        shown = self._shown
        if self._heatmap_visible and self._heat is not None and shown is not None:
            painter.setOpacity(self._opacity)
            # the engine gives maps at frame size (zero outside the ROI); any other size is stretched
            painter.drawImage(target, self._heat)
            painter.setOpacity(1.0)
        if shown is not None and shown.regions:
            scale = target.width() / self._frame.width()
            pen = QPen(QColor("#ff00ff"), max(2.0, 2.5 * scale))
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            font = painter.font()
            font.setPointSize(11)
            font.setBold(True)
            painter.setFont(font)
            placed: list[QRectF] = []                      # labels drawn so far: later ones go elsewhere
            labels: list[tuple[QRectF, str]] = []
            texts = region_labels(shown.regions)
            for rank, region in enumerate(shown.regions):   # highest score first
                rect = QRectF(
                    target.x() + region.x * scale, target.y() + region.y * scale,
                    max(region.width * scale, 3.0), max(region.height * scale, 3.0),
                )
                painter.drawRect(rect)
                if self.show_labels and rank < MAX_LABELS:
                    labels.append((rect, texts[rank]))
            for rect, label in labels:              # after every box: no box line crosses a label
                size = painter.fontMetrics().boundingRect(label).size()
                spot = place_label(rect, QSizeF(size.width() + 6, size.height() + 2), placed, target)
                if spot is None:
                    continue                        # no free place beside its box: the box stays unlabelled
                placed.append(spot)
                painter.fillRect(spot, QColor(0, 0, 0, 150))     # readable over the heatmap and the part
                painter.drawText(spot, Qt.AlignmentFlag.AlignCenter, label)
        if self._stale:
            # a frame that is not being inspected now must not read as the current part
            painter.fillRect(target, QColor(38, 50, 56, 190))
            painter.setPen(QColor("#eceff1"))
            font = painter.font()
            font.setPointSize(20)
            font.setBold(True)
            painter.setFont(font)
            painter.drawText(target, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._stale)
        painter.end()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        return QSize(640, 480)


def region_size(area_px: int, area_mm2: float | None) -> str:
    """A region's size as the screens write it: mm² where the recipe gives a scale, else pixels."""
    return f"{area_mm2:.1f} mm²" if area_mm2 is not None else f"{area_px} px"


def region_labels(regions: Sequence[DefectRegion]) -> list[str]:
    """Each region's label: its confirmed class, else the typer's guess with its confidence, else its size.

    The typer types a frame's regions together by default (one guess for all of them), so a guess is
    written once, on the first region that has it (the highest-scoring); the others show their size.
    """
    labels: list[str] = []
    guessed: set[str] = set()
    for region in regions:
        size = region_size(region.area_px, region.area_mm2)
        if region.defect_class is None and region.predicted_class is not None:
            # the few-shot typer's guess, with its confidence ("unknown": a new kind of defect)
            guess = (f"{region.predicted_class} {100 * (region.type_confidence or 0):.0f} %"
                     if region.predicted_class != "unknown" else "unknown type")
            labels.append(size if guess in guessed else guess)
            guessed.add(guess)
        else:
            labels.append(region.defect_class or size)
    return labels


class VerdictBanner(QFrame):
    """A large PASS / REVIEW / FAIL / ERROR banner with the score, readable from two metres.

    The verdict's font follows the banner's height, and colours come from `VERDICT_COLOURS`.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("VerdictBanner")
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._verdict = QLabel("READY")
        self._verdict.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._detail = QLabel("")
        self._detail.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._detail.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 8)
        layout.addWidget(self._verdict, 4)
        layout.addWidget(self._detail, 1)
        self._state = "IDLE"
        self._apply_style()

    @property
    def verdict_text(self) -> str:
        return self._verdict.text()

    @property
    def detail_text(self) -> str:
        return self._detail.text()

    @property
    def state(self) -> str:
        """"IDLE" or the shown verdict's value."""
        return self._state

    def show_result(self, result: InspectionResult) -> None:
        """Show the verdict and score of ``result`` (ERROR shows its sentence instead of a score)."""
        self._state = str(result.verdict)
        self._verdict.setText(str(result.verdict))
        if result.verdict == Verdict.ERROR:
            detail = result.error or "the frame could not be inspected"
        else:
            score = "—" if result.score is None else f"{result.score:.3f}"
            n = len(result.regions)
            defects = f"\n{n} defect{'s' if n != 1 else ''}" if n else ""
            detail = f"score {score}{defects}"
        self._detail.setText(detail)
        self._apply_style()

    def show_idle(self, text: str = "READY", detail: str = "") -> None:
        """Grey banner with a word (READY, PAUSED, STOPPED) instead of a verdict."""
        self._state = "IDLE"
        self._verdict.setText(text)
        self._detail.setText(detail)
        self._apply_style()

    def _apply_style(self) -> None:
        background, text = VERDICT_COLOURS.get(self._state, VERDICT_COLOURS["IDLE"])
        self.setStyleSheet(
            f"#VerdictBanner {{ background: {background}; border-radius: 10px; }}"
            f"#VerdictBanner QLabel {{ color: {text}; background: transparent; }}"
        )
        self._fit_font()

    def _fit_font(self) -> None:
        height = max(self._verdict.height(), 40)
        width = max(self._verdict.width() - 24, 80)
        chars = max(len(self._verdict.text()), 4)
        # bold sans capitals are about 0.75 em wide; keep a margin so the word never touches the edge
        pixel = int(min(height * 0.75, width / (chars * 0.8)))
        font = QFont(self._verdict.font())
        font.setBold(True)
        font.setPixelSize(max(pixel, 18))
        self._verdict.setFont(font)
        detail = QFont(self._detail.font())
        detail.setPixelSize(max(int(pixel * 0.28), 14))
        detail.setBold(True)
        self._detail.setFont(detail)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt name)
        super().resizeEvent(event)
        self._fit_font()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        return QSize(420, 220)


class VerdictStrip(QWidget):
    """The last ``capacity`` verdicts as coloured cells, newest on the right."""

    def __init__(self, capacity: int = 20, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._verdicts: deque[Verdict] = deque(maxlen=capacity)
        self.setMinimumHeight(34)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Last verdicts, newest on the right")

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        return tuple(self._verdicts)

    def add(self, verdict: Verdict) -> None:
        self._verdicts.append(verdict)
        self.update()

    def clear(self) -> None:
        self._verdicts.clear()
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt name)
        painter = QPainter(self)
        capacity = self._verdicts.maxlen or 1
        gap = 3.0
        cell = (self.width() - gap * (capacity - 1)) / capacity
        font = painter.font()
        font.setBold(True)
        font.setPixelSize(max(int(self.height() * 0.5), 10))
        painter.setFont(font)
        start = capacity - len(self._verdicts)
        for slot in range(capacity):
            rect = QRectF(slot * (cell + gap), 0, cell, self.height())
            if slot < start:
                painter.fillRect(rect, QColor("#263238"))
                continue
            verdict = self._verdicts[slot - start]
            background, text = VERDICT_COLOURS[verdict]
            painter.fillRect(rect, QColor(background))
            painter.setPen(QColor(text))
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, str(verdict)[0])
        painter.end()


class YieldPanel(QFrame):
    """Counters of the running lot (inspected, pass, review, fail, errors, yield %) and line health
    (parts per minute over a minute, inspection time as stored, frames waiting, dropped live frames).
    Refreshed by the main window's timer, a few times per second."""

    FIELDS = (
        ("inspected", "Inspected"), ("passed", "Pass"), ("review", "Review"),
        ("failed", "Fail"), ("errors", "Errors"), ("yield", "Yield"),
        ("rate", "Parts/min"), ("inspect", "Inspect time"), ("behind", "Behind"),
        ("dropped", "Dropped"),
    )

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("YieldPanel")
        self.setStyleSheet(
            "#YieldPanel { background: #1c2329; border-radius: 8px; }"
            "#YieldPanel QLabel { color: #eceff1; background: transparent; }"
            "#YieldPanel QLabel[role='value'] { font-size: 26px; font-weight: bold; }"
            "#YieldPanel QLabel[role='name'] { font-size: 13px; color: #90a4ae; }"
        )
        grid = QGridLayout(self)
        grid.setContentsMargins(10, 8, 10, 8)
        grid.setVerticalSpacing(0)
        self._values: dict[str, QLabel] = {}
        colours = {"passed": "#4caf50", "review": "#ffca28", "failed": "#ff5252", "errors": "#ce93d8"}
        for index, (key, title) in enumerate(self.FIELDS):
            row, col = divmod(index, 3)
            name = QLabel(title)
            name.setProperty("role", "name")
            value = QLabel("—")
            value.setProperty("role", "value")
            if key in colours:
                value.setStyleSheet(f"color: {colours[key]};")
            grid.addWidget(value, row * 2, col)
            grid.addWidget(name, row * 2 + 1, col)
            self._values[key] = value
        self.set_counts(LotCounts())

    def value(self, key: str) -> str:
        """The text shown for a field (``inspected``, ``passed``, ``yield``, ``fps``, ...), for tests."""
        return self._values[key].text()

    def set_counts(self, counts: LotCounts) -> None:
        self._values["inspected"].setText(str(counts.inspected))
        self._values["passed"].setText(str(counts.passed))
        self._values["review"].setText(str(counts.review))
        self._values["failed"].setText(str(counts.failed))
        self._values["errors"].setText(str(counts.errors))
        pct = counts.yield_pct
        self._values["yield"].setText("—" if pct is None else f"{pct:.1f} %")

    def set_metrics(self, metrics: LineMetrics | None) -> None:
        """Show `inspector.controller.LineMetrics`, or dashes when nothing runs.

        Inspect time is the last result's ``times.total_ms``, the figure the store records; Behind
        counts frames read but not yet inspected; Dropped applies to live sources only ("n/a" for a
        folder or video, where the reader waits instead of dropping).
        """
        if metrics is None:
            for key in ("rate", "inspect", "behind", "dropped"):
                self._values[key].setText("—")
            return
        rate = metrics.parts_per_minute
        self._values["rate"].setText("—" if rate is None else f"{rate:.1f}" if rate < 10 else f"{rate:.0f}")
        ms = metrics.inspect_ms
        if ms is None or not math.isfinite(ms):
            self._values["inspect"].setText("—")
        else:
            self._values["inspect"].setText(f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms")
        self._values["behind"].setText(f"{metrics.behind} frames" if metrics.behind else "0")
        self._values["dropped"].setText("n/a" if metrics.dropped is None else str(metrics.dropped))


class FaultBanner(QWidget):
    """Banners for faults an operator must see: camera lost, model missing, GPU unavailable.

    Each fault has a key, so it can be raised and cleared independently; hidden when there are none.
    """

    LEVEL_COLOURS = {  # (background, text), high contrast like the verdict banner
        "error": ("#b71c1c", "#ffffff"),
        "warning": ("#ff8f00", "#000000"),
        "info": ("#01579b", "#ffffff"),
    }

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(4)
        self._labels: dict[str, QLabel] = {}
        self.setVisible(False)

    def faults(self) -> dict[str, str]:
        """The shown faults, key -> text."""
        return {key: label.text() for key, label in self._labels.items()}

    def set_fault(self, key: str, text: str, *, level: str = "error") -> None:
        """Show (or replace) the banner for ``key``; ``level`` is error, warning or info."""
        label = self._labels.get(key)
        if label is None:
            label = QLabel()
            label.setWordWrap(True)
            label.setObjectName(f"fault-{key}")
            self._labels[key] = label
            self._layout.addWidget(label)
        background, colour = self.LEVEL_COLOURS.get(level, self.LEVEL_COLOURS["error"])
        label.setStyleSheet(
            f"background: {background}; color: {colour}; font-size: 20px; font-weight: bold;"
            " padding: 8px 14px; border-radius: 6px;"
        )
        label.setText(text)
        self.setVisible(True)

    def clear_fault(self, key: str) -> None:
        label = self._labels.pop(key, None)
        if label is not None:
            self._layout.removeWidget(label)
            label.deleteLater()
        self.setVisible(bool(self._labels))
