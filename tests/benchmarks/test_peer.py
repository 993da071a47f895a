"""benchmarks/_peer: anomalib's AnomalyDINO, served from the cache, gets the features it would compute itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks._features import FeatureStore
from benchmarks._peer import PeerDetector, build_peer, check_peer_features, frame_maps
from models.evaluation import load_image_rgb
from models.preprocess import to_model_input
from tests.benchmarks.conftest import SHORTER_SIDE

pytest.importorskip("anomalib")
# importing anomalib's models warns that its own DINOv2 layers package is deprecated (not used here)
pytestmark = pytest.mark.filterwarnings("ignore:The anomalib.models.components.dinov2 package:FutureWarning")


def test_cached_features_are_the_peers_own(
    store: FeatureStore, random_state_dict: dict[str, torch.Tensor], parts: dict[str, list[Path]],
) -> None:
    peer = build_peer(random_state_dict)
    own = peer.extract_features                     # anomalib's extraction, before the cache replaces it
    PeerDetector(peer, store=store, shorter_side=SHORTER_SIDE)
    assert peer.extract_features is not own
    for path in parts["train"][:2] + parts["bad"][:1]:
        x = to_model_input(load_image_rgb(path)[None], shorter_side=SHORTER_SIDE)
        with torch.inference_mode():
            expected = own(x).float()               # (1, N, D): block 12 with the final norm
            served = peer.extract_features(x)
        assert served.shape == expected.shape == (1, 4 * 5, 384)
        # the cache keeps fp16: equal up to its rounding
        torch.testing.assert_close(served, expected, rtol=2e-3, atol=2e-3)
        assert float(F.cosine_similarity(served, expected, dim=-1).min()) > 0.9999


def test_the_peer_loads_our_weights_strictly(random_state_dict: dict[str, torch.Tensor]) -> None:
    peer = build_peer(random_state_dict)
    vit = peer.feature_encoder.feature_extractor
    for name in ("blocks.11.mlp.fc2.weight", "norm.weight", "patch_embed.proj.weight"):
        assert torch.equal(vit.state_dict()[name], random_state_dict[name])
    broken = {k: v for k, v in random_state_dict.items() if k != "norm.bias"}
    with pytest.raises(RuntimeError, match="norm.bias"):
        build_peer(broken)


def test_the_peer_on_cached_features_scores_as_on_its_own(
    store: FeatureStore, random_state_dict: dict[str, torch.Tensor], parts: dict[str, list[Path]],
) -> None:
    train = [load_image_rgb(p) for p in parts["train"]]
    test = [load_image_rgb(p) for p in parts["good"][:1] + parts["bad"][:2]]
    cached = PeerDetector(build_peer(random_state_dict), store=store, shorter_side=SHORTER_SIDE)
    own = PeerDetector(build_peer(random_state_dict), store=None, shorter_side=SHORTER_SIDE)
    for detector in (cached, own):
        detector.fit(train)
    assert cached.config["features"] == "cached" and own.config["features"] == "own"
    np.testing.assert_allclose(cached.train_scores, own.train_scores, rtol=1e-2, atol=1e-3)
    assert len(cached.train_scores) == len(train)            # leave-one-out, one per training image
    for image in test:
        a, b = cached.predict(image[None]), own.predict(image[None])
        np.testing.assert_allclose(a.pred_score, b.pred_score, rtol=1e-2, atol=1e-3)
        assert a.anomaly_map.shape == (1, *image.shape[:2])
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-2, atol=2e-3)


def test_check_peer_features_measures_anomalibs_resampling(
    store: FeatureStore, random_state_dict: dict[str, torch.Tensor], parts: dict[str, list[Path]],
) -> None:
    """The check runs the peer with timm's pos-embed antialiasing off (as anomalib does) and puts it back."""
    import timm.models.vision_transformer as vit

    before = vit.resample_abs_pos_embed
    peer = build_peer(random_state_dict)
    assert vit.resample_abs_pos_embed is before              # building the peer changed nothing global
    images = [load_image_rgb(p) for p in parts["train"][:2]]
    worst = check_peer_features(peer, store, images, SHORTER_SIDE)
    assert vit.resample_abs_pos_embed is before
    assert 0.5 < worst <= 1.0 + 1e-6


def test_frame_maps_pads_the_crop_and_resizes_to_the_frame() -> None:
    # 60 x 95 frame at shorter side 56: resized 56 x 89 (rounded), crop 56 x 84, 2 columns cut on the left
    crop = torch.arange(56 * 84, dtype=torch.float32).reshape(1, 1, 56, 84)
    out = frame_maps(crop, (60, 95), shorter_side=56)
    assert out.shape == (1, 60, 95)
    resized = F.pad(crop, (2, 3, 0, 0), mode="replicate")
    expected = F.interpolate(resized, size=(60, 95), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out, expected)
    same = torch.rand(1, 1, 56, 84)
    torch.testing.assert_close(frame_maps(same, (56, 84), shorter_side=56), same[:, 0])
