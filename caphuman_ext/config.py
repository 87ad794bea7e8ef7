"""CapFace configuration, derived from a state dict the way diffusers derives a UNet config from weights."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch


class ConfigError(ValueError):
    """The weights do not describe a CapFace network."""


# What a CapFace can be: SD1.x/SD2.x/SDXL-sized control networks fit with room to spare; a file asking for more (a
# 200000-block "network" in 434 bytes of metadata) is refused before anything is built.
MAX_LEVELS = 6
MAX_RES_BLOCKS = 8
MAX_TRANSFORMER_DEPTH = 16
MAX_CHANNELS = 4096
MAX_MULT = 16
MAX_HEADS = 256
MAX_INPUT_CHANNELS = 64
MAX_INPUT_BLOCKS = 1 + MAX_LEVELS * (MAX_RES_BLOCKS + 1)


@dataclass(frozen=True)
class CapFaceConfig:
    """Architecture of a CapFace network (the reference's `control_stage_config.params` plus the projections)."""

    in_channels: int = 4
    model_channels: int = 320
    hint_channels: int = 9
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    attention_levels: tuple[int, ...] = (0, 1, 2)
    num_heads: int = 8
    num_head_channels: int = -1
    transformer_depth: int = 1
    context_dim: int = 768
    use_linear_in_transformer: bool = False
    use_scale_shift_norm: bool = False
    clip_token_dim: int = 1024
    face_embedding_dim: int = 512
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def attention_resolutions(self) -> tuple[int, ...]:
        """Down-sampling factors with attention, as ldm configs write them (level L -> 2**L)."""
        return tuple(2**level for level in self.attention_levels)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError unless every field is an integer within what a CapFace network can be."""
        def integer(name: str, value: object, low: int, high: int, allow_minus_one: bool = False) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    low <= value <= high or (allow_minus_one and value == -1)):
                raise ConfigError(f"{name} = {value!r}: expected an integer in {low}..{high}")

        integer("in_channels", self.in_channels, 1, MAX_INPUT_CHANNELS)
        integer("hint_channels", self.hint_channels, 1, MAX_INPUT_CHANNELS)
        integer("model_channels", self.model_channels, 1, MAX_CHANNELS)
        integer("num_heads", self.num_heads, 1, MAX_HEADS, allow_minus_one=True)
        integer("num_head_channels", self.num_head_channels, 1, MAX_CHANNELS, allow_minus_one=True)
        integer("transformer_depth", self.transformer_depth, 1, MAX_TRANSFORMER_DEPTH)
        for name in ("context_dim", "clip_token_dim", "face_embedding_dim"):
            integer(name, getattr(self, name), 1, 4 * MAX_CHANNELS)
        levels = len(self.channel_mult)
        if not 1 <= levels <= MAX_LEVELS or len(self.num_res_blocks) != levels:
            raise ConfigError(f"channel_mult {self.channel_mult} / num_res_blocks {self.num_res_blocks}: expected "
                              f"1..{MAX_LEVELS} levels, one block count per level")
        for level in range(levels):
            integer(f"num_res_blocks[{level}]", self.num_res_blocks[level], 1, MAX_RES_BLOCKS)
            integer(f"channel_mult[{level}]", self.channel_mult[level], 1, MAX_MULT)
        if self.model_channels * max(self.channel_mult) > MAX_CHANNELS:
            raise ConfigError(f"model_channels x channel_mult exceeds {MAX_CHANNELS} channels")
        for level in self.attention_levels:
            integer("attention_levels", level, 0, levels - 1)
        if len(set(self.attention_levels)) != len(self.attention_levels):
            raise ConfigError(f"attention_levels {self.attention_levels} repeat a level")
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ConfigError("one of num_heads / num_head_channels must be set")

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("extra")
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> CapFaceConfig:
        """A config from JSON-like data (e.g. a converted file's metadata), validated; ConfigError if malformed."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a mapping of config fields, found {type(data).__name__}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "extra"}
        for key in ("num_res_blocks", "channel_mult", "attention_levels"):
            if key in known:
                value = known[key]
                if not isinstance(value, (list, tuple)) or len(value) > MAX_LEVELS:
                    raise ConfigError(f"{key} = {str(value)[:80]}: expected a list of at most {MAX_LEVELS} integers")
                known[key] = tuple(value)
        return cls(**known)

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(number of heads, channels per head) of a transformer with `channels` channels."""
        if self.num_head_channels > 0:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads


_INPUT_BLOCK = re.compile(r"^input_blocks\.(\d{1,6})\.")
_TRANSFORMER_BLOCK = re.compile(r"^input_blocks\.\d+\.1\.transformer_blocks\.(\d{1,6})\.")


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ConfigError(f"missing tensor '{key}'")
    return tuple(state[key].shape)


def derive_config(state: Mapping[str, torch.Tensor], num_heads: int | None = None,
                  num_head_channels: int | None = None) -> CapFaceConfig:
    """Read the architecture off CapFace weights (keys without the `control_model.` prefix, projections as
    `id_linear.*` / `img_linear.*`).

    Attention heads leave no trace in weights: SD1.x-sized contexts (768) use 8 heads, SD2.x-sized (1024) 64
    channels per head, anything else 8 heads, unless given.
    """
    first = _shape(state, "input_blocks.0.0.weight")
    model_channels, in_channels = first[0], first[1]
    hint_channels = _shape(state, "input_hint_block.0.weight")[1]
    block_ids = sorted({int(m.group(1)) for k in state if (m := _INPUT_BLOCK.match(k))})
    if len(block_ids) > MAX_INPUT_BLOCKS:
        raise ConfigError(f"{len(block_ids)} input blocks: a CapFace network has at most {MAX_INPUT_BLOCKS}")
    if block_ids != list(range(len(block_ids))):
        raise ConfigError(f"input blocks are not numbered 0..n: {block_ids}")

    levels: list[list[int]] = [[]]  # per level: indices of its res blocks
    mults: list[int] = []
    attention_levels: list[int] = []
    depth = 1
    use_linear = False
    context_dim = None
    scale_shift = False
    for index in block_ids[1:]:
        prefix = f"input_blocks.{index}."
        if f"{prefix}0.op.weight" in state:  # Downsample closes a level
            levels.append([])
            continue
        if f"{prefix}0.in_layers.0.weight" not in state:
            raise ConfigError(f"input block {index} is neither a ResBlock nor a conv Downsample")
        out_channels = _shape(state, f"{prefix}0.out_layers.3.weight")[0]
        level = len(levels) - 1
        if not levels[level]:
            mults.append(out_channels // model_channels)
        levels[level].append(index)
        scale_shift = _shape(state, f"{prefix}0.emb_layers.1.weight")[0] == 2 * out_channels
        if f"{prefix}1.proj_in.weight" in state:
            if level not in attention_levels:
                attention_levels.append(level)
            use_linear = len(_shape(state, f"{prefix}1.proj_in.weight")) == 2
            context_dim = _shape(state, f"{prefix}1.transformer_blocks.0.attn2.to_k.weight")[1]
            depth = 1 + max(int(m.group(1)) for k in state
                            if k.startswith(prefix) and (m := _TRANSFORMER_BLOCK.match(k)))
    if context_dim is None:
        if "middle_block.1.transformer_blocks.0.attn2.to_k.weight" not in state:
            raise ConfigError("no cross-attention layer found: CapFace attends to the identity")
        context_dim = _shape(state, "middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
    if len(mults) != len(levels) or any(not blocks for blocks in levels):
        raise ConfigError("could not read the channel multipliers of the input blocks")

    if num_heads is None and num_head_channels is None:
        if context_dim == 1024:
            num_heads, num_head_channels = -1, 64
        else:
            num_heads, num_head_channels = 8, -1
    clip_dim = _shape(state, "img_linear.weight")[1] if "img_linear.weight" in state else 1024
    face_dim = _shape(state, "id_linear.weight")[1] if "id_linear.weight" in state else 512
    return CapFaceConfig(
        in_channels=in_channels,
        model_channels=model_channels,
        hint_channels=hint_channels,
        num_res_blocks=tuple(len(blocks) for blocks in levels),
        channel_mult=tuple(mults),
        attention_levels=tuple(sorted(attention_levels)),
        num_heads=num_heads if num_heads is not None else -1,
        num_head_channels=num_head_channels if num_head_channels is not None else -1,
        transformer_depth=depth,
        context_dim=context_dim,
        use_linear_in_transformer=use_linear,
        use_scale_shift_norm=scale_shift,
        clip_token_dim=clip_dim,
        face_embedding_dim=face_dim,
    )
