"""CapFace: the ControlNet-style copy of the SD1.5 UNet encoder that CapHuman trains.

Built from the host's own `ldm` blocks, so the webui's attention optimisations and hijacks apply to it.
Parameter names match the `control_model.*`, `id_linear.*` and `img_linear.*` entries of `caphuman.ckpt`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import ldm_blocks
from .config import CapFaceConfig

NUM_RESIDUALS = 13  # 12 input blocks + the middle block of an SD1.5 UNet


class CapFace(nn.Module):
    """CapFace network: 13 residuals and a head mask from (latent, hint, timestep, identity context)."""

    def __init__(self, config: CapFaceConfig) -> None:
        super().__init__()
        openaimodel, attention, util = ldm_blocks()
        self.config = config
        ch = config.model_channels
        time_dim = ch * 4
        conv = util.conv_nd

        self.time_embed = nn.Sequential(util.linear(ch, time_dim), nn.SiLU(), util.linear(time_dim, time_dim))
        self.input_hint_block = openaimodel.TimestepEmbedSequential(
            conv(2, config.hint_channels, 16, 3, padding=1), nn.SiLU(),
            conv(2, 16, 16, 3, padding=1), nn.SiLU(),
            conv(2, 16, 32, 3, padding=1, stride=2), nn.SiLU(),
            conv(2, 32, 32, 3, padding=1), nn.SiLU(),
            conv(2, 32, 96, 3, padding=1, stride=2), nn.SiLU(),
            conv(2, 96, 96, 3, padding=1), nn.SiLU(),
            conv(2, 96, 256, 3, padding=1, stride=2), nn.SiLU(),
            conv(2, 256, ch, 3, padding=1),
        )
        self.mask_predict = nn.Sequential(conv(2, ch, 1, 3, padding=1), nn.Sigmoid())

        def transformer(channels: int) -> nn.Module:
            heads, dim_head = config.heads_for(channels)
            return attention.SpatialTransformer(
                channels, heads, dim_head, depth=config.transformer_depth, context_dim=config.context_dim,
                use_linear=config.use_linear_in_transformer, use_checkpoint=False,
            )

        def resblock(channels: int, out_channels: int) -> nn.Module:
            return openaimodel.ResBlock(channels, time_dim, 0.0, out_channels=out_channels, dims=2,
                                        use_checkpoint=False, use_scale_shift_norm=config.use_scale_shift_norm)

        def zero_conv(channels: int) -> nn.Module:
            return openaimodel.TimestepEmbedSequential(conv(2, channels, channels, 1, padding=0))

        self.input_blocks = nn.ModuleList([openaimodel.TimestepEmbedSequential(conv(2, config.in_channels, ch, 3,
                                                                                    padding=1))])
        self.zero_convs = nn.ModuleList([zero_conv(ch)])
        channels = ch
        last_level = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks[level]):
                layers = [resblock(channels, mult * ch)]
                channels = mult * ch
                if level in config.attention_levels:
                    layers.append(transformer(channels))
                self.input_blocks.append(openaimodel.TimestepEmbedSequential(*layers))
                self.zero_convs.append(zero_conv(channels))
            if level != last_level:
                self.input_blocks.append(openaimodel.TimestepEmbedSequential(
                    openaimodel.Downsample(channels, True, dims=2, out_channels=channels)))
                self.zero_convs.append(zero_conv(channels))
        self.middle_block = openaimodel.TimestepEmbedSequential(
            resblock(channels, channels), transformer(channels), resblock(channels, channels))
        self.middle_block_out = zero_conv(channels)

        self.img_linear = nn.Linear(config.clip_token_dim, config.context_dim)
        self.id_linear = nn.Linear(config.face_embedding_dim, config.context_dim)

    def timestep_embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        """ldm's sinusoidal embedding (cos half, then sin half), with the frequency table computed on the CPU as ldm
        does but copied to the device once, so a step makes no host-to-device copy (CUDA-graph safe)."""
        dim = self.config.model_channels
        half = dim // 2
        key = (timesteps.device, dim)
        freqs = self._freqs.get(key) if hasattr(self, "_freqs") else None
        if freqs is None:
            freqs = torch.exp(-math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
            freqs = freqs.to(timesteps.device)
            self._freqs = {**getattr(self, "_freqs", {}), key: freqs}
        args = timesteps[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    @property
    def num_residuals(self) -> int:
        return len(self.zero_convs) + 1

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.time_embed[0].weight.device

    def identity_context(self, clip_tokens: torch.Tensor, face_embedding: torch.Tensor) -> torch.Tensor:
        """`cat([img_linear(clip_tokens), id_linear(face_embedding)], 1)`: (B, 257 + 1, context_dim).

        clip_tokens: CLIP ViT-L/14 vision `last_hidden_state` (B, 257, 1024); face_embedding: FaceNet (B, 1, 512)
        or (B, 512).
        """
        if face_embedding.dim() == 2:
            face_embedding = face_embedding[:, None]
        if clip_tokens.dim() != 3 or face_embedding.dim() != 3:
            raise ValueError(f"expected clip tokens (B, T, {self.config.clip_token_dim}) and a face embedding "
                             f"(B, 1, {self.config.face_embedding_dim}); got {tuple(clip_tokens.shape)} and "
                             f"{tuple(face_embedding.shape)}")
        weight = self.img_linear.weight
        image = self.img_linear(clip_tokens.to(weight.device, weight.dtype))
        face = self.id_linear(face_embedding.to(weight.device, weight.dtype))
        return torch.cat([image, face], dim=1)

    def hint_features(self, hint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the 9-channel hint (8x the latent size): (features added after the first block, head mask).

        Neither depends on the latent or the timestep, so callers compute them once per hint.
        """
        if hint.dim() != 4 or hint.shape[1] != self.config.hint_channels:
            raise ValueError(f"hint must be (B, {self.config.hint_channels}, H, W), got {tuple(hint.shape)}")
        features = self.input_hint_block(hint.to(self.device, self.dtype), None, None)
        return features, self.mask_predict(features)

    def residuals(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                  hint_features: torch.Tensor) -> list[torch.Tensor]:
        """The 13 residuals (input blocks, then middle) before strength and mask."""
        emb = self.time_embed(self.timestep_embedding(timesteps).to(self.dtype))
        context = context.to(self.dtype)
        h = x[:, : self.config.in_channels].to(self.dtype)
        outs = []
        for index, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs, strict=True)):
            h = block(h, emb, context)
            if index == 0:
                h = h + hint_features
            outs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h, emb, context))
        return outs

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                context: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Reference-shaped call: (13 residuals, sigmoid head mask at latent size)."""
        features, mask = self.hint_features(hint)
        return self.residuals(x, timesteps, context, features), mask
