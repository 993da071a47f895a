"""The probe benchmarks/bank_density.py: the bank's radii (from `models.detectors._knn.bank_spread`, tested in
tests/models/test_knn_spread.py) as the probe reads them, and the radius a query takes from its nearest bank patch."""

from __future__ import annotations

import math

import torch

from benchmarks.bank_density import nearest_with_radius
from models.detectors._knn import bank_spread


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_a_bank_patch_is_measured_against_the_other_images_only() -> None:
    a, b, c = _unit(torch.tensor([1.0, 0.0, 0.0])), _unit(torch.tensor([0.0, 1.0, 0.0])), _unit(
        torch.tensor([1.0, 1.0, 0.0]))
    bank = torch.stack([a, a, b, c])            # image 0 holds a twice; image 1 holds b and c
    owner = torch.tensor([0, 0, 1, 1])
    radii = bank_spread(bank, owner, query_chunk_size=3, chunk_size=2).nearest     # blocks that join up
    # a's twin is in its own image: its nearest elsewhere is c (45 degrees), not the twin (0)
    assert math.isclose(float(radii[0]), 1 - math.cos(math.pi / 4), abs_tol=1e-6)
    assert math.isclose(float(radii[2]), 1.0, abs_tol=1e-6)       # b -> a in image 0 (90 degrees), not c beside it
    assert math.isclose(float(radii[3]), 1 - math.cos(math.pi / 4), abs_tol=1e-6)      # c -> a, 45 degrees
    assert float(bank_spread(bank[:2], owner[:2]).nearest[0]) == math.inf              # one image: no other


def test_a_query_takes_the_radius_of_its_nearest_bank_patch() -> None:
    bank = torch.eye(3)
    radii = torch.tensor([0.1, 0.2, 0.3])
    queries = _unit(torch.tensor([[0.1, 0.0, 1.0], [1.0, 0.05, 0.0]]))
    dist, near = nearest_with_radius(queries, bank, radii)
    assert near.tolist() == [0.30000001192092896, 0.10000000149011612]
    assert torch.allclose(dist, 1 - queries.max(dim=1).values)
