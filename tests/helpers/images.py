"""Small synthetic "parts" with drawn defects and known masks, seeded and made by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def textured_part(rng: np.random.Generator, size: int = 84) -> np.ndarray:
    """A good part: a grey disc with a ring on a darker textured background.

    Returns:
        (size, size, 3) uint8 BGR.
    """
    image = np.full((size, size, 3), 60, np.uint8)
    cv2.circle(image, (size // 2, size // 2), int(size * 0.38), (150, 160, 170), thickness=-1)
    cv2.circle(image, (size // 2, size // 2), int(size * 0.2), (110, 120, 130), thickness=2)
    noise = rng.normal(0, 5, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def with_defect(image_bgr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a bright blob with a scratch inside the part; returns (image, (H, W) bool mask of the defect)."""
    size = image_bgr.shape[0]
    out = image_bgr.copy()
    mask = np.zeros(out.shape[:2], np.uint8)
    cx = int(size * 0.5 + rng.integers(-size // 8, size // 8 + 1))
    cy = int(size * 0.5 + rng.integers(-size // 8, size // 8 + 1))
    radius = max(3, size // 9)
    cv2.circle(out, (cx, cy), radius, (20, 220, 240), thickness=-1)
    cv2.circle(mask, (cx, cy), radius, 1, thickness=-1)
    return out, mask.astype(bool)


def write_images(folder: Path, images: list[np.ndarray], *, prefix: str = "img") -> list[Path]:
    """Write BGR images as PNG files ``<prefix>_000.png``, ... into ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{prefix}_{i:03d}.png"
        if not cv2.imwrite(str(path), image):
            msg = f"could not write {path}"
            raise OSError(msg)
        paths.append(path)
    return paths
