"""The PySide6 desktop app of the inspection station."""
