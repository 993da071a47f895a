"""The own-frame distance of benchmarks/self_reference.py: a repeated texture explains itself, a lone patch does not."""

from __future__ import annotations

import torch

from benchmarks.self_reference import self_distances


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_a_repeated_texture_is_explained_by_its_own_frame_and_a_lone_patch_is_not() -> None:
    generator = torch.Generator().manual_seed(0)
    tile = _unit(torch.randn(2, 2, 16, generator=generator))
    frame = tile.repeat(4, 4, 1)                               # an 8 x 8 grid: a 2 x 2 motif repeated
    frame[5, 5] = _unit(torch.randn(16, generator=generator))  # one patch unlike every other
    dist = self_distances(frame, radius=1)[..., 0]
    assert dist.shape == (8, 8)
    assert float(dist[0, 0]) < 1e-5                            # its twin two patches away, outside the radius
    assert float(dist[5, 5]) > 0.3
    assert int(dist.argmax()) == 5 * 8 + 5


def test_the_radius_leaves_out_the_patch_and_its_neighbours() -> None:
    a, b = _unit(torch.tensor([1.0, 0.0])), _unit(torch.tensor([0.0, 1.0]))
    frame = torch.stack([a, a, b, b, b]).reshape(1, 5, 2)      # one row: a a b b b
    near = self_distances(frame, radius=0)[0, :, 0]            # only the patch itself is left out
    assert torch.allclose(near, torch.zeros(5), atol=1e-6)
    wide = self_distances(frame, radius=1)[0, :, 0]            # the patch and the ones beside it
    assert float(wide[0]) > 0.99                               # its twin is beside it: the nearest left is a b
    assert float(wide[2]) < 1e-6                               # a b two places on
