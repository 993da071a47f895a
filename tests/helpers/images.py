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


TYPE_SIZE = 56   # px, a multiple of the 14-px patch


def _round_part(rng: np.random.Generator) -> np.ndarray:
    image = np.full((TYPE_SIZE, TYPE_SIZE, 3), 40, np.uint8)
    cv2.circle(image, (TYPE_SIZE // 2, TYPE_SIZE // 2), TYPE_SIZE // 3, (170, 170, 170), -1)
    return np.clip(image.astype(int) + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)


def write_two_type_category(root: Path) -> Path:
    """A category with 4 train/good images, 1 test/good, and 4 scratches and 4 blobs with their masks.

    Returns:
        ``root`` (MVTec AD layout, ``TYPE_SIZE`` px images).
    """
    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/scratch", "test/blob", "ground_truth/scratch", "ground_truth/blob"):
        (root / sub).mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), _round_part(rng))
    cv2.imwrite(str(root / "test/good/000.png"), _round_part(rng))
    for i in range(4):
        scratch, blob = _round_part(rng), _round_part(rng)
        scratch_mask, blob_mask = np.zeros((TYPE_SIZE, TYPE_SIZE), np.uint8), np.zeros((TYPE_SIZE, TYPE_SIZE), np.uint8)
        for image, mask, colour in ((scratch, scratch_mask, (20, 20, 230)), (blob, blob_mask, (0, 200, 255))):
            for target, value in ((image, colour), (mask, (255, 255, 255))):
                if image is scratch:
                    cv2.line(target, (12 + i, 16), (44, 38 - i), value, 3)
                else:
                    cv2.circle(target, (28 + i, 26), 7, value, -1)
        for kind, image, mask in (("scratch", scratch, scratch_mask), ("blob", blob, blob_mask)):
            cv2.imwrite(str(root / "test" / kind / f"{i:03d}.png"), image)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{i:03d}_mask.png"), mask)
    return root
