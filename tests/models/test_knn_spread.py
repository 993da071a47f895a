"""The good bank's own spread (`bank_spread`) and the search in units of it (`knn_distances(bank_scale=...)`),
against brute force on small random banks."""

from __future__ import annotations

import math

import pytest
import torch

from models.detectors._knn import bank_spread, knn_distances


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _bank(seed: int = 0, images: int = 5, per_image: int = 7, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    bank = _unit(torch.randn(images * per_image, dim, generator=gen))
    owner = torch.arange(images).repeat_interleave(per_image)[torch.randperm(images * per_image, generator=gen)]
    return bank, owner


def _nearest_other(bank: torch.Tensor, owner: torch.Tensor, left_out: int | None = None) -> torch.Tensor:
    dist = 1.0 - bank @ bank.T
    barred = owner[:, None] == owner[None]
    if left_out is not None:
        barred |= (owner == left_out)[None]
    return dist.masked_fill(barred, math.inf).amin(dim=1).clamp(min=0.0)


@pytest.mark.parametrize(("query_chunk", "chunk"), [(3, 4), (1024, 16384), (5, 35)])
def test_the_spread_matches_brute_force_and_leaves_any_image_out(query_chunk: int, chunk: int) -> None:
    bank, owner = _bank()
    spread = bank_spread(bank, owner, query_chunk_size=query_chunk, chunk_size=chunk)   # blocks that must join up
    assert torch.allclose(spread.nearest, _nearest_other(bank, owner), atol=1e-6)
    dist = 1.0 - bank @ bank.T
    dist.masked_fill_(owner[:, None] == owner[None], math.inf)
    assert torch.equal(spread.nearest_owner, owner[dist.argmin(dim=1)])
    for j in range(5):
        keep = owner != j
        exact = _nearest_other(bank, owner, left_out=j)[keep]
        assert torch.allclose(spread.without(j)[keep], exact, atol=1e-6), f"image {j} left out"


def test_a_bank_of_one_image_has_no_spread_and_two_images_no_second() -> None:
    bank, owner = _bank(images=2, per_image=3)
    spread = bank_spread(bank, owner)
    assert torch.isfinite(spread.nearest).all() and torch.isinf(spread.second).all()
    assert torch.isinf(bank_spread(bank[owner == 0], owner[owner == 0]).nearest).all()


@pytest.mark.parametrize("k", [1, 3])
def test_the_scaled_search_is_the_least_distance_in_each_entrys_unit(k: int) -> None:
    bank, owner = _bank(seed=1)
    queries = _unit(torch.randn(9, bank.shape[1], generator=torch.Generator().manual_seed(2)))
    scale = torch.rand(len(bank), generator=torch.Generator().manual_seed(3)) + 0.1
    expected = ((1.0 - queries @ bank.T).clamp(min=0.0) / scale).topk(k, dim=1, largest=False).values.mean(dim=1)
    found = knn_distances(queries, bank, k=k, bank_scale=scale, chunk_size=4, query_chunk_size=2)
    assert torch.allclose(found, expected, atol=1e-5)
    ones = knn_distances(queries, bank, k=k, bank_scale=torch.ones(len(bank)), chunk_size=4)
    assert torch.allclose(ones, knn_distances(queries, bank, k=k, chunk_size=4), atol=1e-6)
    # leave-one-out: the query's own image is never its neighbour, scaled or not
    own = knn_distances(bank, bank, bank_scale=scale, query_owner=owner, bank_owner=owner)
    assert (own > 0).all()
    with pytest.raises(ValueError, match="one unit per bank entry"):
        knn_distances(queries, bank, bank_scale=scale[:-1])


def test_a_small_step_off_a_tight_kind_of_patch_outweighs_the_same_step_off_a_spread_one() -> None:
    """Two kinds of good patch: one the same on every good image (a plain background), one that varies from
    image to image (a lead's edge). A query the same distance from each is far more unusual beside the first."""
    gen = torch.Generator().manual_seed(0)
    tight_centre, loose_centre = torch.zeros(16), torch.zeros(16)
    tight_centre[0], loose_centre[1] = 1.0, 1.0
    tight = _unit(tight_centre + 0.01 * torch.randn(8, 16, generator=gen))
    loose = _unit(loose_centre + 0.3 * torch.randn(8, 16, generator=gen))
    bank = torch.cat([tight, loose])
    owner = torch.cat([torch.arange(8), torch.arange(8)])           # each good image holds one of each kind
    spread = bank_spread(bank, owner)
    assert float(spread.nearest[:8].median()) < 0.2 * float(spread.nearest[8:].median())
    step = 0.15 * torch.randn(2, 16, generator=gen)
    queries = _unit(torch.stack([tight[0], loose[0]]) + step)
    plain = knn_distances(queries, bank)
    scaled = knn_distances(queries, bank, bank_scale=spread.nearest + 2.0 * spread.nearest.median())
    assert float(scaled[0] / scaled[1]) > 1.5 * float(plain[0] / plain[1])
