"""anomalib's ``AnomalyDINOModel`` as the peer, with our weights and our (cached) features.

Two things are needed to run the peer fairly and offline:

1. Weights without a hub download. ``AnomalyDINOModel`` builds its backbone through anomalib's
   ``TimmFeatureExtractor``, which calls ``timm.create_model(name, pretrained=True)``. While the
   peer is built, that call is redirected to ``pretrained=False``; our converted state dict is
   then loaded strictly into ``peer.feature_encoder.feature_extractor`` (a timm ViT).
2. Same input and same features. The peer gets exactly the tensor our preprocessing makes
   (shorter side 448, bicubic + antialias, ImageNet normalisation, crop to a multiple of 14).
   Its ``extract_features`` is served from the feature cache (block 12 of 12 = anomalib's
   ``blocks.11`` with the final norm, what the peer extracts); everything after it (cosine kNN
   with k=1, top-1 % image score, upsampling and sigma-4 blur) is the peer's own code.

``TimmFeatureExtractor`` also switches off antialiasing of timm's position-embedding resampling,
globally (``_disable_pos_embed_antialiasing``, for ONNX). That would change *our* backbone too,
so the original function is put back once the peer is built. The two variants differ little
(cosine similarity of block features >= 0.999 at 448 px); ``check_peer_features`` measures it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._features import FeatureStore
from models.detectors.patch_knn import Detection
from models.preprocess import frame_geometry, to_model_input

__all__ = ["PeerDetector", "build_peer", "check_peer_features", "frame_maps"]

logger = logging.getLogger(__name__)

LOO_IMAGES = 16      # leave-one-out scores for calibration: at most this many training images


@contextlib.contextmanager
def _offline_timm() -> Iterator[None]:
    """Build anomalib's timm backbone without weights, and keep timm's pos-embed resampling as is."""
    import timm
    import timm.models.vision_transformer as vit
    from anomalib.models.components.feature_extractors import timm as anomalib_timm

    original_create = timm.create_model
    original_resample = vit.resample_abs_pos_embed

    def create(*args: Any, **kwargs: Any) -> Any:
        kwargs["pretrained"] = False
        return original_create(*args, **kwargs)

    anomalib_timm.timm.create_model = create
    try:
        yield
    finally:
        anomalib_timm.timm.create_model = original_create
        vit.resample_abs_pos_embed = original_resample


def build_peer(state_dict: dict[str, torch.Tensor], *, model_name: str = "vit_small_patch14_dinov2") -> Any:
    """anomalib's ``AnomalyDINOModel`` (its defaults: k=1, no masking, no coreset) with our weights."""
    from anomalib.models.image.anomaly_dino.torch_model import AnomalyDINOModel

    from models.backbone import _fit_pos_embed

    with _offline_timm():
        peer = AnomalyDINOModel(encoder_name=model_name)
    vit = peer.feature_encoder.feature_extractor
    missing, unexpected = vit.load_state_dict(_fit_pos_embed(vit, state_dict), strict=False)
    if unexpected or any(not k.startswith("head") for k in missing):
        msg = f"peer backbone does not take our weights: missing {missing}, unexpected {unexpected}"
        raise RuntimeError(msg)
    return peer.eval()


class PeerDetector:
    """The peer behind ``models.evaluation``'s detector interface (fit / predict / train_scores).

    Args:
        peer: from ``build_peer``.
        store: the feature cache; None runs the peer's own backbone (slow, used for the check).
        shorter_side: input resolution, as for PatchKNN.
        block: 1-based block whose cached features the peer gets (12 = what anomalib extracts; another block
            needs the cache).
    """

    def __init__(self, peer: Any, *, store: FeatureStore | None, shorter_side: int = 448, block: int = 12) -> None:
        self.peer = peer
        self.store = store
        self.shorter_side = shorter_side
        self.train_scores: np.ndarray = np.empty(0, dtype=np.float32)
        if store is None and block != 12:
            msg = f"the peer's own backbone gives block 12 only; block {block} needs the feature cache"
            raise ValueError(msg)
        self.config = {"detector": "anomalib.AnomalyDINOModel", "shorter_side": shorter_side, "block": block,
                       "k": peer.num_neighbours, "masking": peer.masking,
                       "coreset_subsampling": peer.coreset_subsampling,
                       "features": "cached" if store else "own"}
        if store is not None:
            if not 1 <= block <= store.full.depth:
                msg = f"block must be 1 to {store.full.depth}, got {block}"
                raise ValueError(msg)

            def cached(x: torch.Tensor) -> torch.Tensor:
                feats = store.get(x)[:, :, :, block - 1, :].float()        # (B, h, w, D)
                return feats.reshape(feats.shape[0], -1, feats.shape[-1])  # (B, N, D) as the peer's NLC

            self.peer.extract_features = cached

    def _input(self, image_rgb: np.ndarray) -> torch.Tensor:
        return to_model_input(image_rgb[None], shorter_side=self.shorter_side)

    @torch.inference_mode()
    def fit(self, images_rgb: list[np.ndarray]) -> None:
        """Collect every training patch into the peer's memory bank (its training step), then fit."""
        self.peer.train()
        per_image: list[torch.Tensor] = []
        for image in images_rgb:
            self.peer(self._input(image))
            per_image.append(self.peer.embedding_store[-1])
        self.peer.fit()
        self.peer.eval()
        # Leave-one-out scores for calibration: the peer scores a training image against a bank
        # without that image's patches (anomalib has no such step; we add it to calibrate F1).
        full_bank = self.peer.memory_bank
        rng = np.random.default_rng(0)
        chosen = rng.choice(len(images_rgb), size=min(LOO_IMAGES, len(images_rgb)), replace=False)
        scores = []
        if len(images_rgb) >= 2:
            for i in sorted(chosen.tolist()):
                self.peer.memory_bank = torch.cat([p for j, p in enumerate(per_image) if j != i])
                scores.append(float(self.peer(self._input(images_rgb[i])).pred_score.reshape(-1)[0]))
        self.peer.memory_bank = full_bank
        self.train_scores = np.asarray(scores, dtype=np.float32)

    @torch.inference_mode()
    def predict(self, images_rgb: np.ndarray) -> Detection:
        """One (1, H, W, 3) uint8 RGB frame -> Detection with the map brought back to frame size."""
        image = images_rgb[0]
        out = self.peer(self._input(image))
        amap = frame_maps(out.anomaly_map, image.shape[:2], shorter_side=self.shorter_side)
        return Detection(pred_score=out.pred_score.reshape(-1).numpy(), anomaly_map=amap.numpy())


def frame_maps(anomaly_map: torch.Tensor, frame_hw: tuple[int, int], *, shorter_side: int) -> torch.Tensor:
    """The peer's (B, 1, crop_h, crop_w) maps brought back to the frame as PatchKNN does: the cropped-off
    border padded by edge replication, then resized to (H, W) bilinearly. Returns (B, H, W) float32."""
    geo = frame_geometry(*frame_hw, shorter_side=shorter_side, patch_size=14)
    amap = anomaly_map.float()
    (rh, rw), (ch, cw), (top, left) = geo.resized, geo.crop, geo.offset
    if (rh, rw) != (ch, cw):
        amap = F.pad(amap, (left, rw - cw - left, top, rh - ch - top), mode="replicate")
    if geo.frame != geo.resized:
        amap = F.interpolate(amap, size=geo.frame, mode="bilinear", align_corners=False)
    return amap[:, 0]


def check_peer_features(
    peer: Any, store: FeatureStore, images_rgb: list[np.ndarray], shorter_side: int
) -> float:
    """Smallest cosine similarity between the peer's own last-block features and the cached ones."""
    import timm.models.vision_transformer as vit
    from anomalib.models.components.feature_extractors.timm import _disable_pos_embed_antialiasing

    inputs = [to_model_input(image[None], shorter_side=shorter_side) for image in images_rgb]
    # Cached features first, with timm's own resampling: a cache miss must not be computed while
    # the peer's patch is active, or the check would compare the patched features with themselves.
    cached = [store.get(x)[:, :, :, store.full.depth - 1, :].float() for x in inputs]
    original = vit.resample_abs_pos_embed
    _disable_pos_embed_antialiasing()          # the peer's own extraction, as anomalib runs it
    worst = 1.0
    with contextlib.ExitStack() as stack, torch.inference_mode():
        stack.callback(setattr, vit, "resample_abs_pos_embed", original)
        for x, ref in zip(inputs, cached, strict=True):
            own = peer.feature_encoder(x)[peer.last_layer].float()
            worst = min(worst, float(F.cosine_similarity(own, ref.reshape(own.shape), dim=-1).min()))
    return worst
