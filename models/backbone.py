"""The DINOv2 feature extractor: a timm ViT that returns patch tokens of chosen blocks.

Block numbers are 1-based, as people say them: ``blocks=(8,)`` is the output of the 8th of the 12
transformer blocks of ViT-S/14. Several blocks are concatenated along the feature axis.

Example:
    >>> backbone = create_backbone("vit_small_patch14_dinov2", weights="random", blocks=(8,))
    >>> feats = backbone(torch.zeros(1, 3, 224, 224))   # (1, 16, 16, 384)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, cast

import timm
import torch
from torch import nn

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

__all__ = ["BACKBONES", "DinoBackbone", "create_backbone", "resolve_device"]

logger = logging.getLogger(__name__)

# timm's DINOv2 family (facebookresearch/dinov2, ported in timm/models/vision_transformer.py).
BACKBONES: Final = (
    "vit_small_patch14_dinov2",
    "vit_base_patch14_dinov2",
    "vit_large_patch14_dinov2",
    "vit_small_patch14_reg4_dinov2",
    "vit_base_patch14_reg4_dinov2",
    "vit_large_patch14_reg4_dinov2",
)
DEVICES: Final = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda"`` (or ``"cuda:1"``) into a device.

    ``"cuda"`` without CUDA raises instead of silently falling back; ``"auto"`` logs its pick.
    """
    if isinstance(device, torch.device):
        return device
    kind = device.split(":")[0]
    if kind not in DEVICES:
        msg = f"unknown device {device!r}; use one of: {', '.join(DEVICES)}"
        raise ValueError(msg)
    if kind == "auto":
        picked = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("device 'auto' picked %s", picked)
        return picked
    if kind == "cuda" and not torch.cuda.is_available():
        msg = "device 'cuda' was asked for but CUDA is not available; use device 'auto' or 'cpu'"
        raise RuntimeError(msg)
    return torch.device(device)


def _base_name(model_name: str) -> str:
    """``vit_small_patch14_dinov2.lvd142m`` -> ``vit_small_patch14_dinov2`` (the tag names weights)."""
    return model_name.split(".", 1)[0]


class DinoBackbone(nn.Module):
    """Patch features of chosen blocks of a timm DINOv2 ViT.

    Args:
        vit: a timm ``VisionTransformer`` built with ``dynamic_img_size=True``.
        blocks: 1-based block numbers whose outputs are returned (concatenated along features).
        norm: apply the ViT's final LayerNorm to each block's tokens (as DINOv2's
            ``get_intermediate_layers(norm=True)`` does).
    """

    def __init__(self, vit: VisionTransformer, *, blocks: tuple[int, ...] = (8,), norm: bool = True) -> None:
        super().__init__()
        depth = len(vit.blocks)
        if not blocks:
            msg = "blocks must name at least one transformer block"
            raise ValueError(msg)
        for b in blocks:
            if not 1 <= b <= depth:
                msg = f"block {b} does not exist; this backbone has blocks 1..{depth}"
                raise ValueError(msg)
        self.vit = vit
        self.blocks = tuple(int(b) for b in blocks)
        self.norm = norm
        self.patch_size: int = int(vit.patch_embed.patch_size[0])
        self.embed_dim: int = int(vit.embed_dim)
        self.depth: int = depth

    @property
    def feature_dim(self) -> int:
        """Length of one patch feature: embed_dim times the number of blocks."""
        return self.embed_dim * len(self.blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features.

        Args:
            images: (B, 3, H, W) float, ImageNet-normalised RGB; H and W multiples of the patch size.

        Returns:
            (B, H/patch, W/patch, feature_dim) features in the dtype of the model.
        """
        # intermediates_only=True: timm returns the list of block outputs only (its annotation is a union)
        feats = cast("list[torch.Tensor]", self.vit.forward_intermediates(
            images,
            indices=[b - 1 for b in self.blocks],
            norm=self.norm,
            output_fmt="NCHW",
            intermediates_only=True,
            stop_early=True,   # the blocks after the last one asked for are not run (block 8 of 12: -1/3 compute)
        ))
        out = feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)
        return out.permute(0, 2, 3, 1)


def create_backbone(
    model_name: str = "vit_small_patch14_dinov2",
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    blocks: tuple[int, ...] = (8,),
    norm: bool = True,
    device: str | torch.device = "cpu",
) -> DinoBackbone:
    """Build a DINOv2 backbone through timm and load weights into it strictly.

    Args:
        model_name: a timm DINOv2 name, tag allowed (``vit_small_patch14_dinov2.lvd142m``).
        state_dict: timm-layout weights (see ``models.weights.resolve_weights``); None leaves the
            model randomly initialised, which is only meant for tests.
        blocks: 1-based blocks whose patch tokens are returned.
        norm: apply the final LayerNorm to the returned tokens.
        device: ``"auto" | "cpu" | "cuda"``.

    Returns:
        The backbone in eval mode, without gradients, on ``device``.
    """
    base = _base_name(model_name)
    if base not in BACKBONES:
        msg = f"unknown backbone {model_name!r}; available: {', '.join(BACKBONES)}"
        raise ValueError(msg)
    # pretrained=False: weights never come from the hub here; they are resolved from local files.
    # timm.create_model is annotated nn.Module; every name in BACKBONES builds a VisionTransformer.
    vit = cast("VisionTransformer", timm.create_model(base, pretrained=False, num_classes=0, dynamic_img_size=True))
    if state_dict is not None:
        state_dict = _fit_pos_embed(vit, state_dict)
        vit.load_state_dict(state_dict, strict=True)
    backbone = DinoBackbone(vit, blocks=blocks, norm=norm)
    backbone.eval().requires_grad_(False)
    return backbone.to(resolve_device(device))


def _fit_pos_embed(vit: VisionTransformer, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resample a position embedding saved for another grid to the grid timm built (e.g. 37x37 -> timm's)."""
    key = "pos_embed"
    pos_embed = cast("nn.Parameter", vit.pos_embed)   # Optional in timm; every DINOv2 ViT has one
    if key not in state_dict or state_dict[key].shape == pos_embed.shape:
        return state_dict
    from timm.layers.pos_embed import resample_abs_pos_embed

    prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
    grid = vit.patch_embed.grid_size
    out = dict(state_dict)
    out[key] = resample_abs_pos_embed(state_dict[key], new_size=list(grid), num_prefix_tokens=prefix)
    return out

