"""The app's look: Qt's Fusion style with a dark palette (less glare on a shop-floor screen).

Verdict colours are not here: they live with the banner (`ui.live_view.VERDICT_COLOURS`).
"""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

__all__ = ["apply_theme"]


def apply_theme(app: QApplication) -> None:
    """Fusion style and a dark palette with high-contrast text."""
    app.setStyle("Fusion")
    palette = QPalette()
    roles = {
        QPalette.ColorRole.Window: "#1b2126",
        QPalette.ColorRole.WindowText: "#eceff1",
        QPalette.ColorRole.Base: "#12171b",
        QPalette.ColorRole.AlternateBase: "#1e262c",
        QPalette.ColorRole.ToolTipBase: "#263238",
        QPalette.ColorRole.ToolTipText: "#eceff1",
        QPalette.ColorRole.Text: "#eceff1",
        QPalette.ColorRole.Button: "#263238",
        QPalette.ColorRole.ButtonText: "#eceff1",
        QPalette.ColorRole.BrightText: "#ff5252",
        QPalette.ColorRole.Highlight: "#1e88e5",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.PlaceholderText: "#78909c",
    }
    for role, colour in roles.items():
        palette.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#607d8b"))
    app.setPalette(palette)
