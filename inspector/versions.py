"""A recipe's taught model versions: which exist, which one the line uses, where the next one goes.

Versions live in the recipe's model folder (`inspector.recipe.Recipe.model_dir`): ``v1``, ``v2``, ...
each holding a saved detector (``model.safetensors`` + ``model.json``); numbers are never reused. A
recipe pins one (``model.version: v3``) or says ``latest``, which means the version named in the
folder's ``active`` file when that version exists, else the highest. Teaching and hand-set
thresholds make their new version active; "actually good" feedback does not (it waits until someone
calls `set_active_model_version`). A version may also hold ``reference.png``: one good image it was
taught on (its ROI), the picture the Statistics screen draws where the defects sit (`write_reference`,
`reference_image`); versions derived from another take their source's (`copy_reference`).

This module is the one place those rules live; `Recipe.model_versions`, `Recipe.active_model_version`
and `Recipe.model_version_dir` delegate here, and ``inspector.station`` / ``inspector.recipe`` re-export
the names they used to own.

Example:
    >>> resolve_version(recipe).name          # what Station.load will load
    'v3'
    >>> next_version(recipe).path             # where teaching saves next
    PosixPath('.../models/v4')
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import cv2
import numpy as np

from inspector.errors import ModelError, RecipeError
from models.files import atomic_write

if TYPE_CHECKING:
    from inspector.recipe import Recipe

__all__ = [
    "ACTIVE_FILE",
    "REFERENCE_FILE",
    "ModelVersion",
    "active_model_version",
    "copy_reference",
    "model_versions",
    "next_version",
    "reference_image",
    "resolve_version",
    "set_active_model_version",
    "write_reference",
]

logger = logging.getLogger(__name__)

ACTIVE_FILE: Final = "active"         # in a recipe's model folder: the version "latest" means on the line
REFERENCE_FILE: Final = "reference.png"   # in a version's folder: a good image it was taught on (its ROI)
_FOLDER_RE: Final = re.compile(r"v[1-9][0-9]*")


@dataclass(frozen=True, kw_only=True)
class ModelVersion:
    """One saved model version of a recipe."""

    name: str          # "v3"
    path: Path         # the version's folder


def model_versions(recipe: Recipe) -> list[str]:
    """The model versions present in the recipe's model folder, oldest first (``["v1", "v2", "v10"]``)."""
    folder = recipe.model_dir()
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if p.is_dir() and _FOLDER_RE.fullmatch(p.name)]
    return sorted(found, key=lambda v: int(v[1:]))


def active_model_version(recipe: Recipe) -> str | None:
    """The version named in the model folder's ``active`` file, if that version exists."""
    try:
        name = (recipe.model_dir() / ACTIVE_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return name if name in model_versions(recipe) else None


def resolve_version(recipe: Recipe, version: str | None = None) -> ModelVersion:
    """The version to load: ``version`` if given, else the recipe's pin; for ``latest`` the active one,
    else the highest.

    Raises:
        ModelError: no model was taught yet, or the asked-for (or pinned) version is missing.
    """
    wanted = version if version not in (None, "", "latest") else recipe.model.version
    versions = model_versions(recipe)
    if wanted != "latest":
        if wanted not in versions:
            have = ", ".join(versions) or "none"
            msg = (f"recipe {recipe.name!r} pins model version {wanted} but "
                   f"{recipe.model_dir()} has {have}; teach the recipe or set model.version: latest")
            raise ModelError(msg)
        name = wanted
    elif not versions:
        msg = (f"recipe {recipe.name!r} has no taught model in {recipe.model_dir()}; "
               f"teach it first (inspector train {recipe.path or '<recipe.yaml>'} --good DIR)")
        raise ModelError(msg)
    else:
        name = active_model_version(recipe) or versions[-1]
    return ModelVersion(name=name, path=recipe.model_dir() / name)


def next_version(recipe: Recipe) -> ModelVersion:
    """The folder the next saved version goes to (numbers are never reused)."""
    versions = model_versions(recipe)
    name = f"v{int(versions[-1][1:]) + 1}" if versions else "v1"
    return ModelVersion(name=name, path=recipe.model_dir() / name)


def set_active_model_version(recipe: Recipe, version: str) -> None:
    """Make ``version`` the one the line uses for ``model.version: latest`` (written atomically).

    Raises:
        ModelError: ``version`` is not a saved version of the recipe.
        RecipeError: the ``active`` file cannot be written.
    """
    versions = model_versions(recipe)
    if version not in versions:
        msg = (f"recipe {recipe.name!r} has no model version {version} in {recipe.model_dir()} "
               f"(it has {', '.join(versions) or 'none'})")
        raise ModelError(msg)
    path = recipe.model_dir() / ACTIVE_FILE
    try:
        atomic_write(path, version + "\n")
    except OSError as exc:
        msg = (f"{path}: cannot write the active model version: {exc.strerror or exc}; "
               "check the folder exists and is writable")
        raise RecipeError(msg, path=path) from exc
    logger.info("recipe %s: model %s is active", recipe.name, version)


def write_reference(version_dir: Path, image_bgr: np.ndarray) -> Path | None:
    """Keep ``image_bgr`` ((H, W, 3) uint8, a good image the version was taught on, its ROI) as the version's
    ``reference.png``. A picture for the screens only: when it cannot be written (full disk), a warning says
    so and the version stays as saved. Returns the file, or None when it was not written."""
    path = version_dir / REFERENCE_FILE
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image_bgr))
    try:
        if not ok:
            msg = f"not an image OpenCV can encode: {image_bgr.shape} {image_bgr.dtype}"
            raise ValueError(msg)
        atomic_write(path, encoded.tobytes())
    except (OSError, ValueError) as exc:
        logger.warning("%s: the reference image was not written (%s); the Statistics screen's location map waits "
                       "for a good part on the line instead", path, exc)
        return None
    return path


def copy_reference(source_dir: Path, version_dir: Path) -> Path | None:
    """The reference image of ``source_dir`` for the version derived from it (hand-set thresholds, feedback),
    when there is one; None otherwise."""
    image = reference_image(source_dir)
    return write_reference(version_dir, image) if image is not None else None


def reference_image(version_dir: Path) -> np.ndarray | None:
    """The version's reference image ((H, W, 3) uint8 BGR), or None: a version taught before the file existed,
    or one whose file is unreadable (said in the log)."""
    path = version_dir / REFERENCE_FILE
    if not path.is_file():
        return None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        logger.warning("%s: not a readable image; the location map waits for a good part on the line", path)
    return image
