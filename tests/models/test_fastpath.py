"""The fast path of PatchKNN: reduced precision and CUDA graphs keep the fp32 scores and verdicts.

On the CPU: bf16 autocast of the real DINOv2 backbone against fp32 (score correlation >= 0.9999,
identical verdicts), the CUDA-graph flag falling back to the same eager computation, and the
settings' validation. The CUDA graph itself, pinned memory and fp16 run only with a GPU (``gpu``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.backbone import DinoBackbone, create_backbone
from models.detectors import PatchKNN, PatchKNNConfig
from models.detectors._fastpath import GraphCache, PinnedStaging, autocast_dtype
from models.detectors._foreground import foreground_masks, leading_eigenvector
from tests.models.test_patch_knn import defect_frame, good_frame

SIZE = 112
MIN_CORRELATION = 0.9999


def _frames(seed: int, n_good: int, n_bad: int) -> tuple[list[np.ndarray], list[bool]]:
    rng = np.random.default_rng(seed)
    frames = [good_frame(rng) for _ in range(n_good)] + [defect_frame(rng)[0] for _ in range(n_bad)]
    return frames, [False] * n_good + [True] * n_bad


def _verdicts(scores: np.ndarray, threshold: float) -> list[bool]:
    return [bool(s >= threshold) for s in scores]


def _parity(fp32: PatchKNN, other: PatchKNN, frames: list[np.ndarray]) -> tuple[float, float, np.ndarray]:
    a = fp32.predict(frames, batch_size=4)
    b = other.predict(frames, batch_size=4)
    corr = float(np.corrcoef(a.pred_score, b.pred_score)[0, 1])
    return corr, float(np.abs(np.asarray(a.anomaly_map) - np.asarray(b.anomaly_map)).max()), a.pred_score


def test_bf16_backbone_keeps_scores_and_verdicts_of_fp32(real_backbone: DinoBackbone) -> None:
    train, _ = _frames(1, 3, 0)
    test, is_bad = _frames(2, 6, 4)
    cfg = PatchKNNConfig(shorter_side=SIZE, augment_rotations=False, masking="off", precision="fp32")
    fp32 = PatchKNN(backbone=real_backbone, config=cfg)
    bf16 = PatchKNN(backbone=real_backbone, config=dataclasses.replace(cfg, precision="bf16"))
    fp32.fit(train)
    bf16.fit(train)
    corr, map_diff, scores = _parity(fp32, bf16, test)
    assert corr >= MIN_CORRELATION, f"bf16 vs fp32 score correlation {corr:.6f}"
    assert map_diff < 0.05
    good_max, bad_min = scores[~np.array(is_bad)].max(), scores[np.array(is_bad)].min()
    assert bad_min > good_max, "the test set must separate for the verdict check to mean something"
    threshold = float((good_max + bad_min) / 2)
    assert _verdicts(bf16.predict(test).pred_score, threshold) == _verdicts(scores, threshold) == is_bad


def test_cuda_graph_flag_runs_the_same_computation_eagerly_on_the_cpu() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")
    train, _ = _frames(3, 3, 0)
    test, _ = _frames(4, 2, 2)
    cfg = PatchKNNConfig(shorter_side=SIZE, augment_rotations=False, masking="off")
    eager = PatchKNN(backbone=backbone, config=cfg)
    flagged = PatchKNN(backbone=backbone, config=dataclasses.replace(cfg, cuda_graphs=True))
    eager.fit(train)
    flagged.fit(train)
    assert not flagged.uses_cuda_graphs, "no CUDA device: the flag falls back to eager"
    a, b = eager.predict(test), flagged.predict(test)
    np.testing.assert_array_equal(a.pred_score, b.pred_score)
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


def test_every_patch_path_equals_the_masked_path_with_nothing_masked() -> None:
    """The sync-free scoring (no boolean mask; what a CUDA graph captures) gives the masked path's scores."""
    torch.manual_seed(0)
    backbone = create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")
    train, _ = _frames(5, 3, 0)
    test, _ = _frames(6, 2, 2)
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=SIZE, augment_rotations=False,
                                                                 masking="off"))
    detector.fit(train)
    raw, _ = detector._features(test)
    direct = detector._patch_scores(raw)
    detector.masking_active = True
    detector.reference_foreground = 2.0  # every frame's mask is "too small": all patches kept, via the mask
    masked = detector._patch_scores(raw)
    torch.testing.assert_close(direct, masked)


def test_precision_settings() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("auto", cuda) is torch.float16
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp32", cuda) is None
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16, got 'fp8'"):
        PatchKNNConfig(precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cuda_graphs must be true or false"):
        PatchKNNConfig(cuda_graphs="yes")  # type: ignore[arg-type]


def test_graph_cache_refuses_cpu_tensors_and_staging_passes_them_through() -> None:
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        GraphCache().run(lambda x: (x,), torch.zeros(1, 4, 4, 3, dtype=torch.uint8))
    frames = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    staging = PinnedStaging()
    uploaded = staging.upload(frames, torch.device("cpu"))
    assert uploaded.dtype == torch.uint8 and np.array_equal(uploaded.numpy(), frames)
    (back,) = staging.download(uploaded[..., 0].float())
    assert back.dtype == np.float32 and np.array_equal(back, frames[..., 0])


def _covariances(seed: int, gaps: tuple[float, ...]) -> torch.Tensor:
    """(B, 64, 64) covariances of random features whose second eigenvalue is ``gap`` times the first."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for gap in gaps:
        q, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen, dtype=torch.float64))
        values = torch.rand(64, generator=gen, dtype=torch.float64) * gap * 0.9
        values[0], values[1] = 1.0, gap
        out.append((q * values) @ q.T)
    return torch.stack(out).float()


def test_leading_eigenvector_is_eighs_last_eigenvector() -> None:
    cov = _covariances(0, (0.1, 0.5, 0.9, 0.99))
    expected = torch.linalg.eigh(cov.double())[1][..., -1]
    got = leading_eigenvector(cov)
    assert got.shape == (4, 64) and got.dtype == torch.float32
    cosine = (got.double() * expected).sum(dim=1).abs()
    assert float(cosine.min()) > 1 - 1e-6, cosine
    assert torch.allclose(got.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.isfinite(leading_eigenvector(torch.zeros(1, 8, 8))).all()   # a blank frame: no NaN


def test_foreground_masks_of_the_squaring_path_equal_eighs(monkeypatch: pytest.MonkeyPatch) -> None:
    from models.detectors import _foreground

    rng = np.random.default_rng(3)
    feats = torch.from_numpy(rng.normal(size=(2, 12, 16, 32)).astype(np.float32))
    feats[:, 3:9, 4:12, :8] += 8.0                                # an object: a strong first component
    by_eigh = foreground_masks(feats)
    # the CUDA branch, run on the CPU: eigh's result replaced by leading_eigenvector's
    monkeypatch.setattr(_foreground.torch.linalg, "eigh", lambda cov: (None, leading_eigenvector(cov)[..., None]))
    assert torch.equal(foreground_masks(feats), by_eigh)


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_graphs_and_half_precision_keep_fp32_scores(real_backbone: DinoBackbone, precision: str) -> None:
    backbone = real_backbone.to("cuda")
    train, _ = _frames(7, 3, 0)
    test, _ = _frames(8, 6, 4)
    cfg = PatchKNNConfig(shorter_side=SIZE, augment_rotations=False, masking="off", precision="fp32")
    fp32 = PatchKNN(backbone=backbone, config=cfg)
    fast = PatchKNN(backbone=backbone, config=dataclasses.replace(cfg, precision=precision, cuda_graphs=True))
    fp32.fit(train)
    fast.fit(train)
    assert fast.uses_cuda_graphs
    corr, map_diff, _ = _parity(fp32, fast, test)
    assert corr >= MIN_CORRELATION and map_diff < 0.05, (corr, map_diff)
    one = [fast.predict(f)[0][0] for f in test]                 # batch 1: one graph, replayed
    np.testing.assert_allclose(one, fast.predict(test, batch_size=1).pred_score, rtol=0, atol=1e-6)
    fast.add_normal([test[0]])                                   # a new bank: captured again, not stale
    assert fast.predict(test[0]).pred_score[0] < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masks_on_cuda_equal_the_cpus(real_backbone: DinoBackbone) -> None:
    frames, _ = _frames(9, 3, 3)
    x = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames])
    with torch.inference_mode():   # (an earlier GPU test may have moved the session's backbone to CUDA)
        raw = real_backbone(x.to(next(real_backbone.parameters()).device) - 0.45).float().cpu()
    on_cpu = foreground_masks(raw)
    on_cuda = foreground_masks(raw.to("cuda")).cpu()
    assert (on_cpu != on_cuda).float().mean() < 0.002
