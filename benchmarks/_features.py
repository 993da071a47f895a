"""A disk cache of DINOv2 patch features of all blocks, so kNN-side sweeps cost no backbone time.

The cache sits *inside* the backbone: ``CachedBackbone`` is a ``DinoBackbone`` whose ``forward``
hashes each preprocessed input image (the exact float32 tensor the detector hands it), looks the
hash up on disk and only runs the ViT on a miss, once, for all 12 blocks (fp16). It then returns
the blocks the detector was built for, concatenated as ``DinoBackbone`` does. So the detector
code under test is the real one (preprocessing, rotations, masking, kNN, maps); only the ViT
forward is memoised. A key is (weights sha256, the input tensor's shape and bytes), which covers
category, image, resolution and augmentation at once.

Not for production: a few MB of disk per image and resolution.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from models.backbone import DinoBackbone, create_backbone
from models.files import atomic_open
from models.weights import ResolvedWeights, resolve_weights

__all__ = ["CachedBackbone", "FeatureStore", "neighbourhood_mean", "open_store"]

logger = logging.getLogger(__name__)


class FeatureStore:
    """fp16 (h, w, depth, D) arrays of all blocks' patch tokens, one ``.npy`` per input tensor.

    Args:
        root: cache folder (outside the repository, e.g. under /tmp).
        weights_sha256: identity of the backbone weights; part of every key.
        vit_depth: number of blocks stored per image.
    """

    def __init__(self, root: str | Path, *, weights_sha256: str, full: DinoBackbone) -> None:
        self.root = Path(root) / weights_sha256[:16]
        self.root.mkdir(parents=True, exist_ok=True)
        if full.blocks != tuple(range(1, full.depth + 1)):
            msg = f"the store's backbone must return all blocks 1..{full.depth}, got {full.blocks}"
            raise ValueError(msg)
        self.full = full
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(image: torch.Tensor) -> str:
        """sha1 of one (3, H, W) input tensor's shape, dtype and bytes."""
        data = image.detach().to("cpu", torch.float32).contiguous()
        digest = hashlib.sha1(repr(tuple(data.shape)).encode())
        digest.update(data.numpy().tobytes())
        return digest.hexdigest()[:24]

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, images: torch.Tensor) -> torch.Tensor:
        """All-block features of a batch.

        Args:
            images: (B, 3, H, W) float32 normalised input.

        Returns:
            (B, h, w, depth, D) float16 on the CPU.
        """
        keys = [self.key(img) for img in images]
        patch = self.full.patch_size
        expected = (images.shape[-2] // patch, images.shape[-1] // patch, self.full.depth, self.full.embed_dim)
        out: list[torch.Tensor | None] = []
        missing: list[int] = []
        for i, key in enumerate(keys):
            path = self._path(key)
            if path.is_file():
                entry = self._read(path, expected)
                if entry is not None:
                    out.append(entry)
                    self.hits += 1
                    continue
            out.append(None)
            missing.append(i)
        if missing:
            self.misses += len(missing)
            with torch.inference_mode():
                feats = self.full(images[missing].to(next(self.full.parameters()).device))
            h, w = feats.shape[1:3]
            feats = feats.reshape(len(missing), h, w, self.full.depth, self.full.embed_dim)
            feats = feats.to("cpu", torch.float16)
            for j, i in enumerate(missing):
                out[i] = feats[j]
                self._write(self._path(keys[i]), feats[j].numpy())
        return torch.stack([t for t in out if t is not None])

    @staticmethod
    def _read(path: Path, expected: tuple[int, ...]) -> torch.Tensor | None:
        """The entry at ``path``, or None (logged) when it is unreadable or not a (h, w, depth, D) fp16 array."""
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("%s: unreadable cache entry (%s), recomputing", path, exc)
            return None
        if array.dtype != np.float16 or array.shape != expected:
            logger.warning("%s: stale cache entry (%s %s, expected float16 %s), recomputing",
                           path, array.dtype, array.shape, expected)
            return None
        return torch.from_numpy(array)

    @staticmethod
    def _write(path: Path, array: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, fsync=False) as handle:      # a cache: a lost entry is recomputed
            np.save(handle, array)


def neighbourhood_mean(features: torch.Tensor, size: int) -> torch.Tensor:
    """Average each patch feature over its ``size`` x ``size`` neighbourhood (PatchCore's local aggregation).

    PatchCore (Roth et al., CVPR 2022, section 3.1) pools each patch with its neighbours so that a
    feature describes a slightly larger region; anomalib's PatchCore does it with
    ``AvgPool2d(3, 1, 1)``. Edge patches average only the neighbours that exist
    (``count_include_pad=False``; for cosine kNN the two choices differ only by a scale).

    Args:
        features: (B, h, w, D) patch features.
        size: odd neighbourhood size; 1 returns the features unchanged.

    Returns:
        (B, h, w, D) features, same dtype.
    """
    if size <= 1:
        return features
    if size % 2 == 0:
        msg = f"neighbourhood size must be odd (3, 5, ...), got {size}"
        raise ValueError(msg)
    x = features.permute(0, 3, 1, 2)
    x = torch.nn.functional.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)
    return x.permute(0, 2, 3, 1)


class CachedBackbone(DinoBackbone):
    """A ``DinoBackbone`` that serves the chosen blocks from a ``FeatureStore``.

    Args:
        store: the shared store (its backbone runs on misses).
        blocks: 1-based blocks to return, concatenated along features.
        neighbourhood: 3 = each patch feature averaged with its 3x3 neighbours (the lever this
            benchmark found; see README), 1 = raw patch features as ``DinoBackbone`` returns.
    """

    def __init__(self, store: FeatureStore, *, blocks: tuple[int, ...], neighbourhood: int = 1) -> None:
        super().__init__(store.full.vit, blocks=blocks, norm=store.full.norm)
        self.store = store
        self.neighbourhood = neighbourhood

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised float input -> (B, h, w, D * len(blocks)) float32 features."""
        feats = self.store.get(images)                         # (B, h, w, depth, D) fp16
        chosen = feats[:, :, :, [b - 1 for b in self.blocks], :].float()
        b, h, w = chosen.shape[:3]
        return neighbourhood_mean(chosen.reshape(b, h, w, -1), self.neighbourhood).to(images.device)


def open_store(cache_dir: Path, weights: str | None, *, model_name: str = "vit_small_patch14_dinov2"
               ) -> tuple[FeatureStore, ResolvedWeights]:
    """The feature cache under ``cache_dir`` for the resolved DINOv2 weights (``models.weights``: ``weights``, a
    file, or the default resolution), with all 12 blocks on the CPU to fill a miss; and the weights resolved."""
    resolved = resolve_weights(model_name, weights)
    full = create_backbone(model_name, state_dict=resolved.state_dict, blocks=tuple(range(1, 13)), device="cpu")
    return FeatureStore(cache_dir / "features", weights_sha256=resolved.info.sha256, full=full), resolved
