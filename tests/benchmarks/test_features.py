"""benchmarks/_features: the cache returns what the backbone returns; a corrupt or stale entry is recomputed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks._features import CachedBackbone, FeatureStore, neighbourhood_mean
from models.backbone import create_backbone
from models.evaluation import load_image_rgb
from models.preprocess import to_model_input
from tests.benchmarks.conftest import SHORTER_SIDE, part


def _inputs(n: int, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.cat([to_model_input(part(rng)[0][None], shorter_side=SHORTER_SIDE) for _ in range(n)])


@pytest.mark.parametrize(("blocks", "neighbourhood"), [((8,), 1), ((8, 12), 1), ((8,), 3)])
def test_cached_backbone_returns_what_the_backbone_returns(
    store: FeatureStore, random_state_dict: dict[str, torch.Tensor], blocks: tuple[int, ...], neighbourhood: int,
) -> None:
    direct = create_backbone(state_dict=random_state_dict, blocks=blocks, device="cpu")
    cached = CachedBackbone(store, blocks=blocks, neighbourhood=neighbourhood)
    x = _inputs(2)
    with torch.inference_mode():
        expected = neighbourhood_mean(direct(x).half().float(), neighbourhood)   # the store keeps fp16
        first = cached(x)
        again = cached(x)
    assert first.shape == (2, 4, 5, 384 * len(blocks))
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-6)
    assert (store.misses, store.hits) == (2, 2)             # the second call ran no backbone
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_neighbourhood_mean_averages_the_patches_that_exist() -> None:
    feats = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4, 1)
    pooled = neighbourhood_mean(feats, 3)
    assert float(pooled[0, 0, 0, 0]) == pytest.approx((0 + 1 + 4 + 5) / 4)                # corner: 4 neighbours
    assert float(pooled[0, 1, 1, 0]) == pytest.approx(sum([0, 1, 2, 4, 5, 6, 8, 9, 10]) / 9)
    assert torch.equal(neighbourhood_mean(feats, 1), feats)
    with pytest.raises(ValueError, match="must be odd"):
        neighbourhood_mean(feats, 2)


def test_key_follows_the_input_tensor() -> None:
    x = _inputs(2)
    assert FeatureStore.key(x[0]) == FeatureStore.key(x[0].clone())
    assert FeatureStore.key(x[0]) != FeatureStore.key(x[1])
    assert FeatureStore.key(x[0]) != FeatureStore.key(x[0][:, :, :56])                   # another size


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_shape", "float32"])
def test_a_corrupt_or_stale_entry_is_recomputed_not_used(
    store: FeatureStore, caplog: pytest.LogCaptureFixture, damage: str,
) -> None:
    x = _inputs(1)
    good = store.get(x)
    path = store._path(store.key(x[0]))
    if damage == "garbage":
        path.write_bytes(b"not a numpy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "other_shape":                 # e.g. written for a backbone of another depth
        np.save(path, np.zeros((4, 5, 11, 384), np.float16))
    else:
        np.save(path, good[0].float().numpy())
    misses = store.misses
    again = store.get(x)
    assert store.misses == misses + 1
    torch.testing.assert_close(again, good, rtol=0, atol=0)
    assert "recomputing" in caplog.text
    reread = np.load(path)                        # the entry was written again, whole
    assert reread.dtype == np.float16 and reread.shape == (4, 5, 12, 384)
    assert [p.name for p in path.parent.iterdir()] == [path.name]        # no temporary file left


def test_store_refuses_a_backbone_without_every_block(
    tmp_path: Path, random_state_dict: dict[str, torch.Tensor],
) -> None:
    partial = create_backbone(state_dict=random_state_dict, blocks=(8,), device="cpu")
    with pytest.raises(ValueError, match="all blocks 1..12"):
        FeatureStore(tmp_path, weights_sha256="ab" * 32, full=partial)


def test_features_of_a_file_match_the_backbone(
    store: FeatureStore, parts: dict[str, list[Path]], random_state_dict: dict[str, torch.Tensor],
) -> None:
    image = load_image_rgb(parts["bad"][0])
    x = to_model_input(image[None], shorter_side=SHORTER_SIDE)
    direct = create_backbone(state_dict=random_state_dict, blocks=(12,), device="cpu")
    with torch.inference_mode():
        expected = direct(x).half()
    torch.testing.assert_close(store.get(x)[:, :, :, 11, :], expected, rtol=0, atol=0)
