"""Whether a CapFace can feed a UNet: block layout, widths and the text context it reads (host-neutral)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class IncompatibleUNetError(ValueError):
    """The loaded model is not an SD1.x-shaped UNet that CapFace can feed."""


def _describe_unet(unet: nn.Module) -> str:
    channels, mult = getattr(unet, "model_channels", "?"), list(getattr(unet, "channel_mult", []))
    kind = "an SD1.x UNet" if channels == 320 and mult == [1, 2, 4, 4] and \
        getattr(unet, "context_dim", 768) in (768, None) else "not an SD1.x UNet"
    return f"{channels} channels x {mult}, {len(getattr(unet, 'output_blocks', []))} output blocks: {kind}"


def cross_attention_width(unet: nn.Module) -> int | None:
    """The width of the text context the UNet's cross-attention reads (SD1.x: 768, SD2: 1024, SDXL: 2048)."""
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k") and hasattr(module, "in_features"):
            return int(module.in_features)
    return None


def check_compatible(unet: nn.Module, controls: Sequence[object]) -> None:
    """Raise IncompatibleUNetError naming both shapes when a CapFace cannot feed `unet` (controls or CapFaces)."""
    for name in ("input_blocks", "middle_block", "output_blocks"):
        if not hasattr(unet, name):
            raise IncompatibleUNetError(f"CapHuman needs an ldm UNetModel; {type(unet).__name__} has no {name}")
    blocks = len(unet.output_blocks)
    for control in controls:
        capface = getattr(control, "capface", control)
        config = capface.config
        if capface.num_residuals != blocks + 1 or getattr(unet, "model_channels", None) != \
                config.model_channels or tuple(getattr(unet, "channel_mult", ())) != tuple(config.channel_mult):
            sd1_unet = getattr(unet, "model_channels", None) == 320
            advice = ("this CapHuman file was made for another base model: use the CapHuman file of SD1.5"
                      if sd1_unet else "load an SD1.x checkpoint (SD1.5 or a fine-tune of it)")
            raise IncompatibleUNetError(
                f"the CapFace ({config.model_channels} channels x {list(config.channel_mult)}, "
                f"{capface.num_residuals - 1} blocks) does not fit the loaded checkpoint's UNet "
                f"({_describe_unet(unet)}): {advice}")
        width = cross_attention_width(unet)
        if width is not None and width != config.context_dim:
            raise IncompatibleUNetError(
                f"the loaded checkpoint's UNet reads a {width}-wide text context, CapFace was trained beside one "
                f"that reads {config.context_dim} (SD1.x): load an SD1.x checkpoint (SD1.5 or a fine-tune of it)")
