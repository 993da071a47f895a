"""The operator's station screen: live image + heatmap, verdict banner, recent verdicts, lot counters, faults.

Composes the widgets of `ui.live_view`; the main window feeds it results and pipeline stats.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QSplitter, QVBoxLayout, QWidget

from inspector.results import InspectionResult
from ui.live_view import FaultBanner, HeatmapView, LotCounts, VerdictBanner, VerdictStrip, YieldPanel

__all__ = ["StationView"]


class StationView(QWidget):
    """Station screen: `FaultBanner` on top, `HeatmapView` left, banner/strip/counters right."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.faults = FaultBanner()
        self.heatmap = HeatmapView()
        self.banner = VerdictBanner()
        self.strip = VerdictStrip(capacity=20)
        self.yield_panel = YieldPanel()
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.info.setStyleSheet("color: #cfd8dc; font-size: 15px;")
        self.info.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.headline = QLabel("")          # kiosk only: recipe, model and lot (the footer is hidden there)
        self.headline.setObjectName("kioskHeadline")
        self.headline.setStyleSheet("#kioskHeadline { color: #eceff1; font-size: 24px; font-weight: bold; }")
        self.headline.setWordWrap(True)
        self.headline.setVisible(False)

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(6, 0, 0, 0)
        side_layout.addWidget(self.headline)
        side_layout.addWidget(self.banner, 5)
        side_layout.addWidget(self.strip)
        side_layout.addWidget(self.yield_panel, 3)
        side_layout.addWidget(self.info, 1)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("stationSplitter")
        self.splitter.addWidget(self.heatmap)
        self.splitter.addWidget(side)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.faults)
        layout.addWidget(self.splitter, 1)
        self.setObjectName("station")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.setStyleSheet("#station { background: #0d1114; }")
        self.splitter.setSizes([900, 500])

    def show_result(self, result: InspectionResult) -> None:
        """Show one result: banner, heatmap (newest wins at paint time) and the verdict strip."""
        self.heatmap.show_result(result)
        self.banner.show_result(result)
        self.strip.add(result.verdict)

    def show_idle(self, word: str, detail: str = "") -> None:
        """No current verdict (PAUSED, STOPPED, SOURCE ENDED...): grey banner, last frame greyed out."""
        self.banner.show_idle(word, detail)
        if self.heatmap.result is None:     # the image area says the same, not "press Start" while running
            self.heatmap.set_placeholder(f"No image yet: {detail}" if detail else "No image yet")
        if word == "RUNNING":
            return                          # waiting for the first part of this run: nothing to grey
        if self.heatmap.result is not None:
            self.heatmap.set_stale(f"{word} · last frame, not the current part")

    def set_kiosk(self, on: bool) -> None:
        """Kiosk: the verdict takes half the width and most of the side, readable from across the line."""
        side = self.splitter.widget(1)
        layout = side.layout() if side is not None else None
        if isinstance(layout, QVBoxLayout):
            layout.setStretch(1, 9 if on else 5)       # the banner
            layout.setStretch(4, 0 if on else 1)       # the small print
        self.info.setVisible(not on)
        self.headline.setVisible(on)
        total = max(self.splitter.width(), 2)
        self.splitter.setSizes([total // 2, total // 2] if on else [total * 3 // 5, total * 2 // 5])

    def set_counts(self, counts: LotCounts) -> None:
        self.yield_panel.set_counts(counts)

    def set_info(self, text: str, *, headline: str = "") -> None:
        """Recipe, model version and source, in small print under the counters; ``headline``: the kiosk's
        large line over the verdict (`ui.footer.kiosk_info`)."""
        self.info.setText(text)
        self.headline.setText(headline)
