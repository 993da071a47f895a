"""What a fitted ``PatchKNN`` is made of, to save and load (``models.saved``): tensors and plain fields.

The detector's own methods (``PatchKNN.export_state`` / ``import_state``) call these; each part that holds
state of its own (tiling, the second scale, alignment) writes and checks its share.

Example:
    >>> tensors, info = export_state(detector)
    >>> import_state(fresh_detector, tensors, info)   # same backbone and config: scores as before
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.detectors._knn import compute_dtype

if TYPE_CHECKING:
    from models.detectors.patch_knn import PatchKNN

__all__ = ["export_state", "import_state"]

REQUIRED = ("memory_bank", "bank_owner", "train_scores")


def export_state(detector: PatchKNN) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and plain fields that make up the fitted ``detector``.

    Raises:
        ValueError: the detector is not fitted.
    """
    if not detector.is_fitted:
        msg = "not fitted: call fit() with good images first"
        raise ValueError(msg)
    tensors = {
        "memory_bank": detector.memory_bank.detach().contiguous(),
        "bank_owner": detector.bank_owner.detach().contiguous(),
        "bank_pos": detector.bank_pos.detach().float().contiguous(),
        "train_scores": torch.from_numpy(np.ascontiguousarray(detector.train_scores, dtype=np.float32)),
    }
    info = {
        "masking_active": detector.masking_active,
        "brightness_active": detector.brightness_active,
        "reference_foreground": detector.reference_foreground,
        "rotations_used": detector.rotations_used,
        "n_images": detector.n_images,
    }
    if detector.tiling_active:   # models saved untiled keep their layout (and load as before)
        tensors["bank_tile"] = detector.bank_tile.detach().contiguous()
        info.update(detector.tiling.state())
    scale_tensors, scale_info = detector.second_scale.state()
    aligned_tensors, aligned_info = detector.alignment_state.state()
    extra = {**detector.core.whitening.state(), **detector.spread.state()}
    return {**tensors, **scale_tensors, **aligned_tensors, **extra}, {**info, **scale_info, **aligned_info}


def import_state(detector: PatchKNN, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Restore into ``detector`` (same backbone and config) what ``export_state`` gave.

    Raises:
        ValueError: a tensor is missing, or its shape does not fit this backbone or the other tensors.
    """
    for name in REQUIRED:
        if name not in tensors:
            msg = f"saved detector state lacks the tensor {name!r}"
            raise ValueError(msg)
    bank = tensors["memory_bank"]
    feature_dim = detector.backbone.feature_dim
    if bank.ndim != 2 or bank.shape[1] != feature_dim or bank.shape[0] == 0:
        msg = f"saved memory bank has shape {tuple(bank.shape)}; this backbone gives {feature_dim}-long features"
        raise ValueError(msg)
    if tensors["bank_owner"].shape != (bank.shape[0],):
        shape = tuple(tensors["bank_owner"].shape)
        msg = f"saved bank_owner has shape {shape}; expected ({bank.shape[0]},)"
        raise ValueError(msg)
    dev = detector.device
    detector.memory_bank = bank.to(dev, compute_dtype(dev)).contiguous()
    detector.bank_owner = tensors["bank_owner"].to(dev, torch.int64)
    detector.core.whitening.load_state(tensors, feature_dim, dev)    # none saved (before whitening): identity
    detector.alignment_state.load_state(tensors, info, feature_dim)
    detector.second_scale.load_state(tensors, info, detector.memory_bank)
    detector.spread.load_state(tensors, bank.shape[0], dev)          # none saved (unused, or before): plain
    if "bank_pos" in tensors and tensors["bank_pos"].shape == (bank.shape[0], 2):
        detector.bank_pos = tensors["bank_pos"].to(dev, torch.float32)
    elif detector.search_radius is not None:
        msg = "saved state lacks bank_pos (patch positions), which position_radius needs"
        raise ValueError(msg)
    else:
        detector.bank_pos = torch.zeros(bank.shape[0], 2, dtype=torch.float32, device=dev)
    detector.train_scores = tensors["train_scores"].float().cpu().numpy()
    detector.train_maps = []
    detector.masking_active = bool(info["masking_active"])
    detector.brightness_active = bool(info.get("brightness_active", False))   # saved before: frames as they are
    detector.reference_foreground = float(info["reference_foreground"])
    detector.rotations_used = bool(info["rotations_used"])
    detector.n_images = int(info["n_images"])
    tiles = detector.tiling
    tiles.load_state(info)
    detector.bank_tile = torch.zeros(bank.shape[0], dtype=torch.int64, device=dev)
    if not detector.tiling_active:
        return
    tile = tensors.get("bank_tile")
    n_tiles = tiles.n_tiles
    if tile is None or tile.shape != (bank.shape[0],) or tile.is_floating_point() or (
            tile.numel() and not 0 <= int(tile.min()) <= int(tile.max()) < n_tiles):
        msg = f"saved state of a tiled model lacks a valid bank_tile (tile positions 0..{n_tiles - 1})"
        raise ValueError(msg)
    detector.bank_tile = tile.to(dev, torch.int64)
    if detector.config.tile_bank == "per_position":
        if bool((detector.bank_tile[1:] < detector.bank_tile[:-1]).any()):
            msg = "saved bank_tile of a per-position tile bank is not sorted by tile position"
            raise ValueError(msg)
        tiles.index(detector.bank_tile, n_tiles)
