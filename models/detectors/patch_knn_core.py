"""The pure-tensor core of the patch-kNN detector: normalised images and a memory bank in, scores out.

As anomalib separates ``torch_model.py`` (the algorithm, a plain ``nn.Module``) from its Lightning
wrapper, ``PatchKNNCore`` holds the scoring arithmetic and nothing else: no numpy, no frame checks,
no fitting, no masking decisions. ``PatchKNN`` (``models.detectors.patch_knn``) wraps it with frames,
fitting, masking and leave-one-out scoring, and ``models.export`` traces this very module into the
ONNX graph, so torch and onnxruntime run one definition of the scoring, not two copies.

``forward(images (B, 3, H, W) normalised, memory_bank (M, D)) -> CoreScores``:

1. the backbone's patch features (B, h, w, D), under the configured precision;
2. the good patches' feature map (``_whitening``, fitted at teach time), optional PatchCore pooling over
   p x p patches, then L2 normalisation;
3. the cosine distance of every patch to its k nearest bank patches (``knn_distances``, in bank
   blocks: one MatMul each in the ONNX graph);
4. image score = mean of the top ``top_percent`` % patch scores; anomaly map = bilinear upsampling
   to (H, W) + Gaussian blur (``models.preprocess.crop_maps``).

Example:
    >>> core = PatchKNNCore(backbone, k=1, top_percent=1.0, blur_sigma=4.0)
    >>> scores = core(to_model_input(frame_rgb, shorter_side=448), memory_bank)
    >>> scores.pred_score.shape, scores.anomaly_map.shape
    (torch.Size([1]), torch.Size([1, 448, 672]))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from models.detectors._fastpath import PRECISIONS, autocast_dtype
from models.detectors._knn import knn_distances
from models.detectors._scales import pooled_unit
from models.detectors._whitening import FeatureWhitening
from models.preprocess import crop_maps

__all__ = ["CoreOptions", "CoreScores", "PatchKNNCore"]


class CoreScores(NamedTuple):
    """What ``PatchKNNCore.forward`` returns; the ONNX graph's outputs carry these names."""

    pred_score: torch.Tensor  # (B,) float32 image scores (cosine distance, 0 = normal)
    anomaly_map: torch.Tensor  # (B, H, W) float32 at the model input's size (H, W of ``images``)


@dataclass(frozen=True, kw_only=True)
class CoreOptions:
    """The scoring options of the core; ``PatchKNNConfig`` says where each default comes from."""

    k: int = 1  # neighbours averaged per patch
    top_percent: float = 1.0  # image score = mean of the top this-% patch scores
    blur_sigma: float = 4.0  # Gaussian blur of the upsampled map, in model-input pixels
    patch_pooling: int = 1  # average features over p x p patches (1 = off)
    chunk_size: int = 16384  # bank rows per kNN block
    query_chunk_size: int | None = 4096  # query rows per kNN block; None = all (a traced graph)
    precision: str = "auto"  # backbone autocast: "auto" | "fp32" | "bf16" | "fp16"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            msg = f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            raise ValueError(msg)


class PatchKNNCore(nn.Module):
    """Patch-kNN scoring on tensors: the algorithm, without frames, fitting or masking.

    Args:
        backbone: (B, 3, H, W) normalised float -> (B, h, w, D) patch features (``DinoBackbone``,
            its static copy for export, or ``models.runtime.OrtBackbone``); it has ``patch_size``.
        options: the scoring options.
        whitening: the good patches' feature map (``models.detectors._whitening``), applied before pooling;
            None: a new one, the identity until fitted.
    """

    def __init__(self, backbone: nn.Module, options: CoreOptions | None = None,
                 whitening: FeatureWhitening | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.options = options if options is not None else CoreOptions()
        self.whitening = whitening if whitening is not None else FeatureWhitening()

    def replace(self, *, backbone: nn.Module | None = None, **changes: object) -> PatchKNNCore:
        """A core with another backbone and/or other options (``CoreOptions`` field names); the rest kept
        (the same feature map)."""
        options = dataclasses.replace(self.options, **changes)  # type: ignore[arg-type]
        return PatchKNNCore(backbone if backbone is not None else self.backbone, options, self.whitening)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised float -> (B, h, w, D) raw patch features, float32 under autocast."""
        dtype = autocast_dtype(self.options.precision, images.device)
        if dtype is None:
            return self.backbone(images)  # type: ignore[no-any-return]
        # no autocast weight cache: a CUDA graph must not read casts made outside its capture
        with torch.autocast(images.device.type, dtype=dtype, cache_enabled=False):
            return self.backbone(images).float()  # type: ignore[no-any-return]

    def embed(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D) or (h, w, D) raw features -> the same, float32, mapped into the good patches' space (when
        fitted), pooled (if configured) and L2-normalised."""
        if raw.ndim == 3:
            return self.embed(raw[None])[0]
        return pooled_unit(raw, self.options.patch_pooling, self.whitening)

    def patch_scores(self, raw: torch.Tensor, memory_bank: torch.Tensor,
                     bank_scale: torch.Tensor | None = None) -> torch.Tensor:
        """(B, h, w, D) raw features -> (B, h, w) float32 distance of every patch to the bank (in each bank
        entry's unit, ``bank_scale``, when given: ``models.detectors._spread``)."""
        h, w, d = raw.shape[1], raw.shape[2], raw.shape[3]
        opts = self.options
        feats = self.embed(raw).reshape(-1, d)
        dists = knn_distances(feats, memory_bank, k=opts.k, chunk_size=opts.chunk_size,
                              query_chunk_size=opts.query_chunk_size, bank_scale=bank_scale)
        return dists.reshape(-1, h, w)

    def image_scores(self, patch_scores: torch.Tensor) -> torch.Tensor:
        """(B, h, w) -> (B,) mean of the top ``top_percent`` % patch scores."""
        n_patches = patch_scores.shape[1] * patch_scores.shape[2]
        n_top = max(int(n_patches * self.options.top_percent / 100.0), 1)
        return patch_scores.reshape(-1, n_patches).topk(n_top, dim=1).values.mean(dim=1)

    def maps(self, patch_scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, h, w) patch scores -> (B, H, W) blurred anomaly maps at the model input's ``size``."""
        return crop_maps(patch_scores, size, sigma=self.options.blur_sigma)[:, 0]

    def score(self, images: torch.Tensor, memory_bank: torch.Tensor,
              bank_scale: torch.Tensor | None = None) -> tuple[CoreScores, torch.Tensor]:
        """``forward``, also returning the (B, h, w, D) raw features of the same backbone pass."""
        raw = self.extract(images)
        patch_scores = self.patch_scores(raw, memory_bank, bank_scale)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return CoreScores(self.image_scores(patch_scores), self.maps(patch_scores, size)), raw

    def forward(self, images: torch.Tensor, memory_bank: torch.Tensor,
                bank_scale: torch.Tensor | None = None) -> CoreScores:
        """Score every patch of normalised images against a memory bank.

        Args:
            images: (B, 3, H, W) float, ImageNet-normalised RGB (``models.preprocess.to_model_input``),
                H and W multiples of the backbone's patch size.
            memory_bank: (M, D) L2-normalised good patches, float32 (float16 on CUDA), on the images' device.
            bank_scale: (M,) float32 unit of each bank entry's distances (``_spread``); None: plain distances.

        Returns:
            ``CoreScores(pred_score (B,), anomaly_map (B, H, W))``, float32.
        """
        return self.score(images, memory_bank, bank_scale)[0]
