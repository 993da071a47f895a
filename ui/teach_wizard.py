"""Teaching screen (placeholder until inspector.teach lands)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

__all__ = ["TeachPage"]


class TeachPage(QWidget):
    def __init__(self, *, recipes: Sequence[Path] = (), open_source: Callable[[str], Any] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Teach"))

    def shutdown(self) -> None:
        pass
