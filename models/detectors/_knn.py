"""Nearest-neighbour search and coreset subsampling over a patch memory bank, in bounded memory.

Both work in blocks so that a bank of a million patches never needs a (queries x bank) matrix:
the largest temporaries are one ``query_chunk_size x chunk_size`` block of similarities, plus a
bool mask and (with a search radius) a float32 distance block of the same shape.
On CUDA the block products run in float16 (the bank is stored in float16 there), on the CPU in
float32; distances are always accumulated and returned in float32.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

__all__ = ["BankSpread", "bank_spread", "compute_dtype", "greedy_coreset", "knn_distances"]

logger = logging.getLogger(__name__)


def compute_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA (tensor cores, half the memory), float32 elsewhere (CPU half matmul is slow)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def knn_distances(
    queries: torch.Tensor,
    bank: torch.Tensor,
    *,
    k: int = 1,
    chunk_size: int = 16384,
    query_chunk_size: int | None = 4096,
    query_owner: torch.Tensor | None = None,
    bank_owner: torch.Tensor | None = None,
    query_pos: torch.Tensor | None = None,
    bank_pos: torch.Tensor | None = None,
    radius: float | None = None,
    bank_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cosine distance of each query to its ``k`` nearest bank entries.

    Traceable for ONNX with ``query_chunk_size=None``: the bank blocks unroll into one MatMul each
    against a constant, and no shape of the queries is baked into the graph (the batch stays dynamic).

    Args:
        queries: (Q, D) L2-normalised features, any float dtype, on the bank's device.
        bank: (M, D) L2-normalised features, float16 or float32.
        k: number of neighbours averaged (k=1: the nearest, as in AnomalyDINO).
        chunk_size: bank rows per block.
        query_chunk_size: query rows per block; None takes all queries in one block.
        query_owner: (Q,) int64 owner id per query; with ``bank_owner``, bank entries with the same
            owner as the query are skipped (leave-one-out scoring).
        bank_owner: (M,) int64 owner id per bank entry.
        query_pos: (Q, 2) float32 (y, x) position of each query in [0, 1] frame coordinates; with
            ``bank_pos`` and ``radius``, only bank entries within ``radius`` (Euclidean) count.
        bank_pos: (M, 2) float32 (y, x) position of each bank entry.
        radius: search radius in the same normalised coordinates; None searches everywhere.
        bank_scale: (M,) float32 positive unit per bank entry: each distance is divided by its entry's unit
            before the nearest are taken (a query is judged in units of the spread of the good patches it
            lies near; `bank_spread`). None: plain distances.

    Returns:
        (Q,) float32 cosine distances in [0, 2] (``1 - cos``; divided by the units with ``bank_scale``), on the
        queries' device; ``inf`` where fewer than ``k`` bank entries were allowed.
    """
    if bank.ndim != 2 or queries.ndim != 2 or queries.shape[1] != bank.shape[1]:
        msg = f"queries {tuple(queries.shape)} and bank {tuple(bank.shape)} must be (Q, D) and (M, D)"
        raise ValueError(msg)
    if (query_owner is None) != (bank_owner is None):
        msg = "give both query_owner and bank_owner, or neither"
        raise ValueError(msg)
    use_pos = radius is not None
    if use_pos and (query_pos is None or bank_pos is None):
        msg = "a search radius needs query_pos and bank_pos"
        raise ValueError(msg)
    r2 = float(radius) ** 2 if radius is not None else 0.0
    n_queries, n_bank = queries.shape[0], bank.shape[0]
    if bank_scale is not None and bank_scale.shape != (n_bank,):
        msg = f"bank_scale must be ({n_bank},), one unit per bank entry, got {tuple(bank_scale.shape)}"
        raise ValueError(msg)
    if n_queries == 0 or n_bank == 0:
        return torch.full((n_queries,), math.inf, dtype=torch.float32, device=queries.device)
    dtype = compute_dtype(bank.device)
    inverse_scale = None if bank_scale is None else 1.0 / bank_scale.float()
    k_eff = min(k, n_bank)
    step = n_queries if query_chunk_size is None else query_chunk_size
    parts: list[torch.Tensor] = []
    for q0 in range(0, n_queries, step):
        whole = query_chunk_size is None          # no slicing: a traced graph keeps its dynamic batch
        q = (queries if whole else queries[q0 : q0 + step]).to(dtype)
        q_owner = None
        if query_owner is not None:
            q_owner = (query_owner if whole else query_owner[q0 : q0 + step])[:, None]
        q_pos = (query_pos if whole else query_pos[q0 : q0 + step]) if use_pos and query_pos is not None else None
        # running best similarities (largest first), float32
        best: torch.Tensor | None = None
        for b0 in range(0, n_bank, chunk_size):
            sim = q @ bank[b0 : b0 + chunk_size].to(dtype).T  # (q, b) block of similarities
            if q_owner is not None and bank_owner is not None:
                sim.masked_fill_(q_owner == bank_owner[None, b0 : b0 + chunk_size], -math.inf)
            if q_pos is not None and bank_pos is not None:
                far = torch.cdist(q_pos, bank_pos[b0 : b0 + chunk_size]).square_() > r2
                sim.masked_fill_(far, -math.inf)
            if inverse_scale is not None:   # largest is nearest still: (cos - 1) / unit, the negated scaled distance
                sim = sim.float() if sim.dtype != torch.float32 else sim
                unit = inverse_scale[None, b0 : b0 + chunk_size]
                sim.mul_(unit).sub_(unit)    # in place: two passes over the block, no new one
            if k_eff == 1:
                top = sim.amax(dim=1, keepdim=True).float()
                best = top if best is None else torch.maximum(best, top)
            else:
                top = sim.topk(min(k_eff, sim.shape[1]), dim=1).values.float()
                merged = top if best is None else torch.cat([best, top], dim=1)
                best = merged.topk(min(k_eff, merged.shape[1]), dim=1).values
        if best is None:  # pragma: no cover - n_bank > 0 gives at least one block
            msg = "empty bank"
            raise ValueError(msg)
        # cosine distance; only the lower bound is clamped so that "no neighbour allowed" stays inf
        dist = (-best if inverse_scale is not None else 1.0 - best).clamp(min=0.0)
        parts.append(dist.mean(dim=1) if k_eff > 1 else dist[:, 0])
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass(frozen=True)
class BankSpread:
    """How far each bank entry lies from the good images other than its own: ``nearest`` (M,) the cosine distance
    to the nearest entry of another image, ``nearest_owner`` (M,) that image, ``second`` (M,) the distance to the
    nearest entry of a third image (inf where there is none). ``without(j)`` gives the radii of a bank without
    image j exactly (a leave-one-out bank's own spread, no second search)."""

    nearest: torch.Tensor
    nearest_owner: torch.Tensor
    second: torch.Tensor

    def without(self, owner: int) -> torch.Tensor:
        """(M,) each entry's distance to the nearest entry of another image, image ``owner`` left out (rows of
        ``owner`` itself included: the caller drops them)."""
        return torch.where(self.nearest_owner == owner, self.second, self.nearest)


def bank_spread(bank: torch.Tensor, owner: torch.Tensor, *, query_chunk_size: int = 1024,
                chunk_size: int = 16384) -> BankSpread:
    """The bank's own spread (`BankSpread`): each entry against the entries of the other images, in blocks.

    Args:
        bank: (M, D) L2-normalised features.
        owner: (M,) int64 image id of each entry.
    """
    if bank.ndim != 2 or owner.shape != (bank.shape[0],):
        msg = f"bank {tuple(bank.shape)} and owner {tuple(owner.shape)} must be (M, D) and (M,)"
        raise ValueError(msg)
    dtype = compute_dtype(bank.device)
    n = bank.shape[0]
    first = torch.full((n,), -math.inf, device=bank.device)
    first_owner = torch.full((n,), -1, dtype=torch.int64, device=bank.device)
    second = torch.full((n,), -math.inf, device=bank.device)
    for q0 in range(0, n, query_chunk_size):
        q = bank[q0 : q0 + query_chunk_size].to(dtype)
        q_owner = owner[q0 : q0 + query_chunk_size, None]
        v1, o1, v2 = first[q0 : q0 + len(q)], first_owner[q0 : q0 + len(q)], second[q0 : q0 + len(q)]
        for b0 in range(0, n, chunk_size):
            b_owner = owner[None, b0 : b0 + chunk_size]
            sim = (q @ bank[b0 : b0 + chunk_size].to(dtype).T).float()
            sim.masked_fill_(q_owner == b_owner, -math.inf)                 # not against its own image
            top, index = sim.max(dim=1)
            top_owner = torch.where(torch.isfinite(top), b_owner[0, index], -1)
            sim.masked_fill_(b_owner == top_owner[:, None], -math.inf)
            runner_up = sim.amax(dim=1)                                     # the block's best of another image
            # merge the block's (top, its image, best of another image) into the running three
            same = top_owner == o1
            keep_first = v1 >= top
            new_second = torch.where(same, torch.maximum(v2, runner_up),
                                     torch.where(keep_first, torch.maximum(v2, top), torch.maximum(runner_up, v1)))
            o1.copy_(torch.where(keep_first, o1, top_owner))
            v1.copy_(torch.maximum(v1, top))
            v2.copy_(new_second)
    return BankSpread(nearest=(1.0 - first).clamp(min=0.0), nearest_owner=first_owner,
                      second=(1.0 - second).clamp(min=0.0))


def greedy_coreset(
    features: torch.Tensor,
    size: int,
    *,
    projection_dim: int = 128,
    seed: int = 0,
    chunk_size: int = 65536,
) -> torch.Tensor:
    """Indices of a k-center greedy coreset (PatchCore, Roth et al. 2022, section 3.2).

    Features are first projected to ``projection_dim`` dimensions with a Gaussian random
    projection (Johnson-Lindenstrauss; PatchCore uses 128). Starting from a random entry, each
    step adds the entry farthest from everything chosen so far, so isolated (rare) patches are
    kept and dense clusters are thinned.

    Args:
        features: (M, D) features, any float dtype.
        size: number of entries to keep; ``size >= M`` keeps all.
        projection_dim: dimension of the random projection; no projection when ``D`` is smaller.
        seed: seeds the projection and the start entry.
        chunk_size: rows projected at a time (bounds the float32 temporaries).

    Returns:
        (size,) int64 indices into ``features``, in the order they were chosen.
    """
    n, dim = features.shape
    device = features.device
    if size >= n:
        return torch.arange(n, device=device)
    if size < 1:
        msg = f"coreset size must be >= 1, got {size}"
        raise ValueError(msg)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if dim > projection_dim:
        matrix = torch.randn(dim, projection_dim, generator=gen) / math.sqrt(projection_dim)
        matrix = matrix.to(device)
        projected = torch.cat(
            [features[i : i + chunk_size].float() @ matrix for i in range(0, n, chunk_size)]
        )
    else:
        projected = features.float()
    sq_norms = (projected * projected).sum(dim=1)  # (M,)
    start = int(torch.randint(n, (1,), generator=gen).item())
    chosen = torch.empty(size, dtype=torch.int64, device=device)
    chosen[0] = start
    min_dist = torch.full((n,), math.inf, dtype=torch.float32, device=device)
    idx = torch.tensor(start, device=device)
    # The loop stays on the device: no .item() per step, so CUDA never waits on the host.
    for step in range(1, size):
        # squared L2 to the new centre, |x|^2 - 2 x.c + |c|^2, in one fused pass over the features
        dist = torch.addmv(sq_norms, projected, projected[idx], alpha=-2.0).add_(sq_norms[idx])
        torch.minimum(min_dist, dist, out=min_dist)
        idx = torch.argmax(min_dist)
        chosen[step] = idx
        if step % 10000 == 0:
            logger.debug("coreset: %d of %d chosen", step, size)
    return chosen
