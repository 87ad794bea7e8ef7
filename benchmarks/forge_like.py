"""Forge Classic's sampling path at real size, for the benchmarks: what a Forge user's UNet step runs.

Written after Forge Classic `1f95d717` (no Forge install needed; the ldm UNet's blocks stand in for
`ldm_patched`'s, which are the same modules): `modules_forge/forge_sampler.py` `forge_sample`,
`ldm_patched/modules/samplers.py` `sampling_function` / `calc_cond_uncond_batch` (one call with the cond and the uncond
chunk, `get_control` through the chain once per call, Forge's own per-call work: `get_free_memory`, `cond_mark` made
on the host, the area/count accumulation), `model_base.BaseModel.apply_model` (manual cast: input, context and every
tensor keyword cast to the UNet's dtype, no autocast — Forge's `devices.autocast` is a null context),
`openaimodel.UNetModel.forward` (block modifiers before and after every block, `apply_control` after each input
block, after the middle block and on each skip, popping the deepest first), `model_sampling.ModelSamplingDiscrete`
(EPS) and `unet_patcher.UnetPatcher` (`clone`, `add_patched_controlnet`, `add_block_modifier`).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from ldm.modules.diffusionmodules import openaimodel, util

COND, UNCOND = 0, 1


class ModelSamplingDiscrete:
    """EPS prediction over SD's scaled-linear schedule; the sigma table lives on the device, as in Forge."""

    def __init__(self, device: torch.device) -> None:
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        alphas = torch.cumprod(1 - betas, dim=0)
        self.sigmas = (((1 - alphas) / alphas) ** 0.5).float().to(device)
        self.log_sigmas = self.sigmas.log()
        self.sigma_data = 1.0

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)


def apply_control(h: torch.Tensor, control: dict | None, name: str) -> torch.Tensor:
    """Forge's `apply_control`: pop the last entry of `control[name]` and add it in place."""
    if control is not None and name in control and len(control[name]) > 0:
        ctrl = control[name].pop()
        if ctrl is not None:
            h += ctrl
    return h


def unet_forward(unet, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, control: dict | None = None,
                 transformer_options: dict | None = None) -> torch.Tensor:
    """Forge Classic's `UNetModel.forward` on an ldm UNet's blocks (SD1.x: no label embedding, no patches)."""
    options = transformer_options if transformer_options is not None else {}
    options["original_shape"] = list(x.shape)
    options["transformer_index"] = 0
    modifiers = options.get("block_modifiers", [])
    t_emb = openaimodel.timestep_embedding(timesteps, unet.model_channels, repeat_only=False).to(x.dtype)
    emb = unet.time_embed(t_emb)
    hs, h = [], x
    for index, module in enumerate(unet.input_blocks):
        options["block"] = ("input", index)
        for modifier in modifiers:
            h = modifier(h, "before", options)
        h = apply_control(module(h, emb, context), control, "input")
        for modifier in modifiers:
            h = modifier(h, "after", options)
        hs.append(h)
    options["block"] = ("middle", 0)
    for modifier in modifiers:
        h = modifier(h, "before", options)
    h = apply_control(unet.middle_block(h, emb, context), control, "middle")
    for modifier in modifiers:
        h = modifier(h, "after", options)
    for index, module in enumerate(unet.output_blocks):
        options["block"] = ("output", index)
        skip = apply_control(hs.pop(), control, "output")
        h = torch.cat([h, skip], dim=1)
        del skip
        for modifier in modifiers:
            h = modifier(h, "before", options)
        h = module(h, emb, context)
        for modifier in modifiers:
            h = modifier(h, "after", options)
    options["block"] = ("last", 0)
    for modifier in modifiers:
        h = modifier(h, "before", options)
    h = unet.out(h)
    for modifier in modifiers:
        h = modifier(h, "after", options)
    return h


def forge_group_norms(unet) -> None:
    """Give the UNet's `GroupNorm32` layers Forge's `ops.GroupNorm` behaviour outside autocast (weights cast to the
    input's dtype: fp16 normalisation) — ldm's own upcasts the input to float32, which fp16 weights refuse without
    autocast. Under autocast (the A1111 path, same UNet object) they behave as before."""
    for module in unet.modules():
        if isinstance(module, util.GroupNorm32) and not getattr(module, "_forge_ops", False):
            original = module.forward

            def forward(x, module=module, original=original):
                if torch.is_autocast_enabled(x.device.type):
                    return original(x)
                return F.group_norm(x, module.num_groups, module.weight.to(x.dtype), module.bias.to(x.dtype),
                                    module.eps)

            module.forward = forward
            module._forge_ops = True


class BaseModel:
    """`model_base.BaseModel`: `apply_model` scales the input, casts to the UNet's dtype, runs the UNet in float32
    out, and returns the denoised latent."""

    def __init__(self, unet, device: torch.device) -> None:
        self.diffusion_model = unet
        self.model_sampling = ModelSamplingDiscrete(device)
        self.manual_cast_dtype = None

    def get_dtype(self) -> torch.dtype:
        return self.diffusion_model.dtype

    def memory_required(self, input_shape) -> float:
        return 0.0  # Forge's estimate: always fits on this GPU

    def apply_model(self, x, t, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        dtype = self.manual_cast_dtype or self.get_dtype()
        xc = xc.to(dtype)
        t = self.model_sampling.timestep(t).float()
        context = c_crossattn.to(dtype)
        extra = {}
        for name, value in kwargs.items():  # Forge casts every tensor keyword (also `control_model`, which has dtype)
            if hasattr(value, "dtype") and value.dtype not in (torch.int, torch.long):
                value = value.to(dtype) if isinstance(value, torch.Tensor) else value
            extra[name] = value
        out = unet_forward(self.diffusion_model, xc, t, context, control, transformer_options or {}).float()
        return self.model_sampling.calculate_denoised(sigma, out, x)


class UnetPatcher:
    """`modules_forge.unet_patcher.UnetPatcher`: what `clone`, the control chain and block modifiers need."""

    def __init__(self, model: BaseModel, device: torch.device) -> None:
        self.model = model
        self.load_device = self.offload_device = device
        self.controlnet_linked_list = None
        self.model_options: dict = {"transformer_options": {}}
        self.cond_mark: torch.Tensor | None = None  # the last `cond_mark` (reused while capturing a graph)

    def clone(self) -> UnetPatcher:
        clone = UnetPatcher(self.model, self.load_device)
        clone.controlnet_linked_list = self.controlnet_linked_list
        clone.model_options = {"transformer_options": {k: list(v) if isinstance(v, list) else v
                                                       for k, v in self.model_options["transformer_options"].items()}}
        return clone

    def add_patched_controlnet(self, control) -> None:
        control.set_previous_controlnet(self.controlnet_linked_list)
        self.controlnet_linked_list = control

    def add_block_modifier(self, modifier) -> None:
        self.model_options["transformer_options"].setdefault("block_modifiers", []).append(modifier)

    def list_controlnets(self) -> list:
        found, pointer = [], self.controlnet_linked_list
        while pointer is not None:
            found.append(pointer)
            pointer = pointer.previous_controlnet
        return found


class ForgeModel:
    """`p.sd_model` of Forge: `forge_objects` reset from the pristine UnetPatcher before every generation."""

    def __init__(self, unet, device: torch.device) -> None:
        forge_group_norms(unet)
        self.pristine = UnetPatcher(BaseModel(unet, device), device)
        self.forge_objects = SimpleNamespace(unet=self.pristine)

    def reset(self) -> None:
        self.forge_objects = SimpleNamespace(unet=self.pristine)

    def pre_run(self) -> None:
        """`sampling_prepare`: every link of the chain gets `pre_run`."""
        unet = self.forge_objects.unet
        if unet.controlnet_linked_list is not None:
            unet.controlnet_linked_list.pre_run(unet.model, lambda percent: percent)


def calc_cond_uncond_batch(unet_patcher: UnetPatcher, cond: torch.Tensor, uncond: torch.Tensor, x_in: torch.Tensor,
                           timestep: torch.Tensor, capturing: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Forge's `calc_cond_uncond_batch` for one cond and one uncond entry covering the whole latent, batched in one
    UNet call. capturing: inside a CUDA-graph capture, skip what cannot be captured (the host-side free-memory
    query and `cond_mark`'s host-to-device copy, made once outside instead; same GPU work)."""
    model = unet_patcher.model
    out_cond = torch.zeros_like(x_in)
    out_count = torch.ones_like(x_in) * 1e-37
    out_uncond = torch.zeros_like(x_in)
    out_uncond_count = torch.ones_like(x_in) * 1e-37
    to_run = [(cond, COND), (uncond, UNCOND)]
    mult = [torch.ones_like(x_in) for _ in to_run]  # get_area_and_mult: strength 1 over the whole latent
    if not capturing:
        if x_in.is_cuda:
            torch.cuda.mem_get_info(x_in.device)  # model_management.get_free_memory
        model.memory_required([len(to_run) * x_in.shape[0], *x_in.shape[1:]])
    cond_or_uncond = [kind for _, kind in to_run]
    batch_chunks = len(cond_or_uncond)
    input_x = torch.cat([x_in] * batch_chunks)
    context = torch.cat([text for text, _ in to_run])
    timestep_ = torch.cat([timestep] * batch_chunks)
    options = dict(unet_patcher.model_options["transformer_options"])
    options["cond_or_uncond"] = cond_or_uncond[:]
    options["sigmas"] = timestep
    if capturing:
        options["cond_mark"] = unet_patcher.cond_mark
    else:
        marks = [float(kind) for kind in cond_or_uncond for _ in range(int(timestep.shape[0]))]
        options["cond_mark"] = unet_patcher.cond_mark = torch.Tensor(marks).to(timestep)
    rows = int(timestep.shape[0])
    options["cond_indices"] = [i for c, kind in enumerate(cond_or_uncond) if kind == COND
                               for i in range(c * rows, (c + 1) * rows)]
    options["uncond_indices"] = [i for c, kind in enumerate(cond_or_uncond) if kind == UNCOND
                                 for i in range(c * rows, (c + 1) * rows)]
    c = {"c_crossattn": context, "transformer_options": options}
    control = unet_patcher.controlnet_linked_list
    if control is not None:
        pointer = control
        while pointer is not None:
            pointer.transformer_options = options
            pointer = pointer.previous_controlnet
        c["control"] = control.get_control(input_x, timestep_, dict(c), len(cond_or_uncond))
        c["control_model"] = control
    output = model.apply_model(input_x, timestep_, **c).chunk(batch_chunks)
    del input_x
    for o in range(batch_chunks):
        if cond_or_uncond[o] == COND:
            out_cond += output[o] * mult[o]
            out_count += mult[o]
        else:
            out_uncond += output[o] * mult[o]
            out_uncond_count += mult[o]
    out_cond /= out_count
    out_uncond /= out_uncond_count
    return out_cond, out_uncond


def sampling_function(unet_patcher: UnetPatcher, x: torch.Tensor, timestep: torch.Tensor, uncond: torch.Tensor,
                      cond: torch.Tensor, cond_scale: float) -> torch.Tensor:
    """Forge's `sampling_function`: both predictions in one batch, then CFG."""
    cond_pred, uncond_pred = calc_cond_uncond_batch(unet_patcher, cond, uncond, x, timestep)
    return uncond_pred + (cond_pred - uncond_pred) * cond_scale


__all__ = ["BaseModel", "ForgeModel", "ModelSamplingDiscrete", "UnetPatcher", "apply_control",
           "calc_cond_uncond_batch", "sampling_function", "unet_forward"]
