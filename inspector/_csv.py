"""CSV cells safe to open in a spreadsheet: text that it would run as a formula gets a leading ``'``.

One rule for every CSV the engine writes (the store's export, the statistics exports, the review report),
after OWASP's "CSV injection" advice: a cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage
return is a formula to Excel and LibreOffice (a file named ``=cmd|...`` would run it).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["FORMULA_START", "csv_cell"]

FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` for a CSV cell: None as empty, formula-like text with a leading ``'``, the rest as it is."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value
