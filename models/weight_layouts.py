"""Weight layouts of DINOv2: timm's, Meta's original and Hugging Face's, and a strict check against timm.

``to_timm_layout`` turns any of the three into timm's keys; ``check_timm_keys`` refuses a state dict
that would not load strictly into a timm model (checked against a model on the meta device: no
memory, no initialisation). Used by ``models.weights`` for every source of weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import torch

__all__ = ["check_timm_keys", "hf_to_dinov2", "layout_name", "to_timm_layout"]



def to_timm_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm keys from timm, DINOv2-original or Hugging Face (``Dinov2Model``) layouts.

    The encoder is found by its ``cls_token``: whatever prefix that key carries (``backbone.``,
    ``dinov2.``, ``module.``) is stripped, and keys outside it (heads, decoders) are dropped.
    """
    cls_keys = [k for k in state_dict if k.endswith("cls_token")]
    if len(cls_keys) != 1:
        msg = f"expected one cls_token in the weights, found {len(cls_keys)}"
        raise ValueError(msg)
    prefix = cls_keys[0].removesuffix("cls_token").removesuffix("embeddings.")
    sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if "embeddings.cls_token" in sd:
        sd = hf_to_dinov2(sd)
    # DINOv2-original layout (timm's _convert_dinov2): no mask_token in timm; registers become reg_token
    # of a no_embed_class model, where the class token carries its own position slot.
    sd.pop("mask_token", None)
    if "register_tokens" in sd:
        sd["reg_token"] = sd.pop("register_tokens")
        sd["cls_token"] = sd["cls_token"] + sd["pos_embed"][:, 0]
        sd["pos_embed"] = sd["pos_embed"][:, 1:]
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


# Hugging Face Dinov2Layer names -> DINOv2/timm block names (transformers, modeling_dinov2.py).
_HF_BLOCK_KEYS: Final = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def hf_to_dinov2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Dinov2Model`` keys -> DINOv2-original keys (q, k, v fused into qkv)."""
    out: dict[str, torch.Tensor] = {}
    fixed = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        match = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", key)
        if match is None:
            msg = f"unexpected key {key!r} in Hugging Face layout"
            raise ValueError(msg)
        block, rest = match.groups()
        attn = re.fullmatch(r"attention\.attention\.(query|key|value)\.(weight|bias)", rest)
        if attn is not None:
            qkv.setdefault(f"blocks.{block}.attn.qkv.{attn.group(2)}", {})[attn.group(1)] = value
            continue
        module, _, param = rest.rpartition(".")
        if module not in _HF_BLOCK_KEYS:
            msg = f"unexpected key {key!r} in Hugging Face layout"
            raise ValueError(msg)
        param = "gamma" if param == "lambda1" else param  # LayerScale: lambda1 (HF) is gamma (DINOv2)
        out[f"blocks.{block}.{_HF_BLOCK_KEYS[module]}.{param}"] = value
    for key, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            msg = f"{key}: found only {sorted(parts)} of query, key, value"
            raise ValueError(msg)
        # timm's fused qkv Linear: outputs are [q; k; v] along the first (output) dimension.
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def layout_name(raw: Mapping[str, torch.Tensor]) -> str:
    if any(k.endswith("embeddings.cls_token") for k in raw):
        return "Hugging Face"
    if any(k.endswith(("mask_token", "register_tokens")) for k in raw):
        return "DINOv2"
    return "timm"


def check_timm_keys(state_dict: Mapping[str, torch.Tensor], base: str, *, where: str) -> None:
    """Raise unless ``state_dict`` would load strictly into timm's ``base`` (pos_embed grid may differ).

    Checked against a model built on the meta device: no memory, no initialisation cost.
    """
    import timm

    with torch.device("meta"):
        expected = timm.create_model(base, pretrained=False, num_classes=0).state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = []
    for key in sorted(set(expected) & set(state_dict)):
        want, got = tuple(expected[key].shape), tuple(state_dict[key].shape)
        same = want[-1] == got[-1] and len(want) == len(got) if key == "pos_embed" else want == got
        if not same:
            wrong.append(f"{key} {got} (expected {want})")
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                parts.append(f"{label}: {', '.join(items[:3])}{more}")
        msg = f"{where} does not hold {base} weights ({'; '.join(parts)})"
        raise ValueError(msg)
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            msg = f"{where}: {key} is {tensor.dtype}, expected floating-point weights"
            raise ValueError(msg)
