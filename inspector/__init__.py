"""The inspection engine: frame sources, recipes, the worker pipeline, the statistics store, the CLI.

Runs headless (no Qt); the desktop app in ``ui/`` drives the same code.
"""

__version__ = "0.1.0"
