"""Review screen (placeholder until the store lands)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

__all__ = ["ReviewView"]


class ReviewView(QWidget):
    def __init__(self, store: Any | None, *, feedback_runner: Callable[..., bool] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._store = store
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Review"))

    def refresh(self) -> None:
        pass

    def on_feedback_done(self, value: Any) -> None:
        pass

    def on_feedback_failed(self, text: str) -> None:
        pass
