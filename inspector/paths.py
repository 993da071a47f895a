"""Where the station keeps its files, and how outside names become safe file names.

Per-user folders come from `platformdirs` (``~/.local/share/inspector`` on Linux,
``%LOCALAPPDATA%\\inspector`` on Windows, ``~/Library/Application Support/inspector`` on macOS), and
each can be moved with an environment variable, which is how tests and CI keep away from the
developer's own data::

    INSPECTOR_DATA_DIR    models, the statistics database, the image archive
    INSPECTOR_CACHE_DIR   converted weights and other files that can be rebuilt
    INSPECTOR_ALLOWED_DIRS  further folders (``os.pathsep``-separated) where the station's configuration
                          allows models, archives and databases outside the data folder

A recipe is data that anyone may hand over, so the folders it names for the station to write in
(``model.directory``, ``archive.directory``) and the store's file must resolve, links followed, inside
the data folder or one of the allowed folders (`check_contained`); ``model.directory: /etc`` is refused.

Names that come from outside (recipe names, lot numbers, camera names, user input) go through
`safe_name` before they become part of a path, so that ``../../etc`` or ``C:\\x`` cannot leave the
folder they are meant for.

Example:
    >>> model_dir("fryum_demo")          # doctest: +SKIP
    PosixPath('/home/op/.local/share/inspector/models/fryum_demo')
    >>> safe_name("lot 7/B")
    'lot_7_B-22a1512f'
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path
from typing import Final

import platformdirs

__all__ = [
    "ALLOWED_DIRS_ENV",
    "APP_NAME",
    "CACHE_DIR_ENV",
    "DATA_DIR_ENV",
    "PathNotAllowed",
    "allowed_roots",
    "archive_dir",
    "cache_dir",
    "check_contained",
    "data_dir",
    "database_path",
    "model_dir",
    "safe_name",
]

APP_NAME: Final = "inspector"
DATA_DIR_ENV: Final = "INSPECTOR_DATA_DIR"
CACHE_DIR_ENV: Final = "INSPECTOR_CACHE_DIR"
ALLOWED_DIRS_ENV: Final = "INSPECTOR_ALLOWED_DIRS"

# Characters kept as they are in a file name; everything else becomes "_". This is the portable
# file name character set of POSIX (IEEE Std 1003.1, 3.282), which is also safe on Windows.
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
# Device names that Windows refuses as file names whatever the extension (CreateFile docs,
# "Naming Files, Paths, and Namespaces").
_WINDOWS_RESERVED: Final = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
)
_HASH_CHARS: Final = 8      # 32 bits of sha256: enough to keep distinct outside names apart in one folder
MAX_NAME_LENGTH: Final = 100  # well below the 255-byte limit of common file systems; room for suffixes


def _env_or_default(env: str, default: Path) -> Path:
    value = os.environ.get(env, "").strip()
    return Path(value).expanduser() if value else default


def data_dir(*, create: bool = False) -> Path:
    """The per-user data folder: ``$INSPECTOR_DATA_DIR`` if set, else the platform's user data dir.

    Args:
        create: make the folder (and its parents) if it does not exist.
    """
    path = _env_or_default(DATA_DIR_ENV, platformdirs.user_data_path(APP_NAME, appauthor=False))
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(*, create: bool = False) -> Path:
    """The per-user cache folder: ``$INSPECTOR_CACHE_DIR`` if set, else the platform's user cache dir.

    Args:
        create: make the folder (and its parents) if it does not exist.
    """
    path = _env_or_default(CACHE_DIR_ENV, platformdirs.user_cache_path(APP_NAME, appauthor=False))
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def database_path() -> Path:
    """The default statistics database: ``<data dir>/inspector.db`` (not created here)."""
    return data_dir() / "inspector.db"


def model_dir(recipe_name: str) -> Path:
    """The default model folder of a recipe: ``<data dir>/models/<safe recipe name>``."""
    return data_dir() / "models" / safe_name(recipe_name)


def archive_dir(recipe_name: str) -> Path:
    """The default image archive of a recipe: ``<data dir>/archive/<safe recipe name>``."""
    return data_dir() / "archive" / safe_name(recipe_name)


class PathNotAllowed(ValueError):
    """A configured location lies outside every folder the station may write in."""


def allowed_roots() -> list[Path]:
    """The folders the station may keep models, archives and databases in: the data folder first."""
    roots = [data_dir()]
    for part in os.environ.get(ALLOWED_DIRS_ENV, "").split(os.pathsep):
        if part.strip():
            roots.append(Path(part.strip()).expanduser())
    return [Path(os.path.realpath(r)) for r in roots]


def check_contained(path: Path, field: str) -> Path:
    """``path`` with links resolved, if it lies inside an allowed folder (`allowed_roots`).

    Args:
        path: where something is to be written (need not exist yet).
        field: the setting it came from, for the message (``model.directory``, ``--store``).

    Raises:
        PathNotAllowed: naming the field, the path and the allowed folders, and how to allow one.
    """
    real = Path(os.path.realpath(Path(path).expanduser()))
    roots = allowed_roots()
    if any(real == root or real.is_relative_to(root) for root in roots):
        return real
    msg = (f"{field}: {path} is outside the folders the station may write in "
           f"({', '.join(str(r) for r in roots)}); use a folder inside the data folder, or allow it in "
           f"{ALLOWED_DIRS_ENV}")
    raise PathNotAllowed(msg)


def safe_name(text: str, *, max_length: int = MAX_NAME_LENGTH) -> str:
    """Turn an outside name into one file name component that cannot leave its folder.

    The result uses only ``A-Z a-z 0-9 . _ -``, never starts with ``.`` or ``-`` (no hidden files,
    no ``..``, nothing a command line reads as an option), is never a Windows device name, never
    empty, and at most ``max_length`` characters. A name that is already safe comes back unchanged;
    any other gets ``-`` and 8 hex digits of the SHA-256 of the original appended, so that two
    different outside names (``lot/7`` and ``lot_7``) never share a file.

    Args:
        text: any text, e.g. a lot number typed by an operator.
        max_length: upper bound on the result's length; at least 16.

    Returns:
        The safe file name component.

    Raises:
        ValueError: if ``max_length`` is below 16.

    Example:
        >>> safe_name("fryum_demo")
        'fryum_demo'
        >>> safe_name("../../etc/passwd")
        'etc_passwd-3754d6cb'
    """
    if max_length < 16:
        msg = f"safe_name: max_length must be at least 16, got {max_length}"
        raise ValueError(msg)
    text = str(text)
    # NFKC folds look-alikes (fullwidth letters, ligatures) into plain ones before filtering.
    name = _UNSAFE.sub("_", unicodedata.normalize("NFKC", text))
    name = name.lstrip("._-").rstrip(". ")
    if name.split(".", 1)[0].lower() in _WINDOWS_RESERVED:
        name = f"_{name}"
    if name == text and 0 < len(name) <= max_length:
        return name
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    stem = name[: max_length - _HASH_CHARS - 1].rstrip(".") or "unnamed"
    return f"{stem}-{digest}"
