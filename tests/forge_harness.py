"""A harness of Forge Classic's sampling path around a real tiny ldm UNet (no Forge install needed).

It follows ldm_patched/modules/samplers.py `calc_cond_uncond_batch`, model_base.py `apply_model`, openaimodel.py
`UNetModel.forward` with `apply_control` and block modifiers, modules_forge/unet_patcher.py `clone` /
`add_patched_controlnet` / `add_block_modifier`, and modules_forge/forge_sampler.py `sampling_prepare`: the control
chain is asked for its control once per UNet call with the rows laid out as chunks of images (one chunk per cond or
uncond entry), and the UNet adds `control['middle']` after its middle block and pops `control['output']` onto its
skips. Forge resets `forge_objects` before every pass, as `FakeModel.reset` does.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from ldm.modules.diffusionmodules.util import timestep_embedding

from caphuman_ext.lifecycle import Generation
from caphuman_ext.lifecycle.generation import PreparedUnit

LATENT = (8, 8)


# the harness --------------------------------------------------------------------------------------------
class DiscreteEps:
    """Forge's ModelSamplingDiscrete (EPS): sigma -> nearest discrete timestep, input scaled by 1/sqrt(sigma²+1)."""

    def __init__(self) -> None:
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        alphas = torch.cumprod(1 - betas, dim=0)
        self.log_sigmas = (((1 - alphas) / alphas) ** 0.5).log().float()

    def sigma(self, timestep: int) -> torch.Tensor:
        return self.log_sigmas[timestep].exp()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma.log()[None] - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x / (sigma.view(-1, 1, 1, 1) ** 2 + 1.0) ** 0.5


def apply_control(h: torch.Tensor, control: dict | None, name: str) -> torch.Tensor:
    if control is not None and control.get(name):
        residual = control[name].pop()
        if residual is not None:
            h += residual
    return h


def forge_unet_forward(unet, x, timesteps, context, control=None, transformer_options=None) -> torch.Tensor:
    """Forge Classic's UNetModel.forward on an ldm UNet's blocks (block modifiers around the middle block)."""
    options = transformer_options if transformer_options is not None else {}
    modifiers = options.get("block_modifiers", [])
    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False))
    hs, h = [], x
    for module in unet.input_blocks:
        h = apply_control(module(h, emb, context), control, "input")
        hs.append(h)
    options["block"] = ("middle", 0)
    for modifier in modifiers:
        h = modifier(h, "before", options)
    h = apply_control(unet.middle_block(h, emb, context), control, "middle")
    for modifier in modifiers:
        h = modifier(h, "after", options)
    for module in unet.output_blocks:
        skip = apply_control(hs.pop(), control, "output")
        h = module(torch.cat([h, skip], dim=1), emb, context)
    return unet.out(h)


class BaseModel:
    """Forge's BaseModel: `apply_model` scales the input and converts sigma to the UNet's timestep."""

    def __init__(self, unet) -> None:
        self.diffusion_model = unet
        self.model_sampling = DiscreteEps()
        self.manual_cast_dtype = None

    def get_dtype(self) -> torch.dtype:
        return next(self.diffusion_model.parameters()).dtype

    def apply_model(self, x, sigma, c_crossattn, control=None, transformer_options=None, **kwargs) -> torch.Tensor:
        xc = self.model_sampling.calculate_input(sigma, x)
        for value in kwargs.values():  # Forge casts every extra keyword with a dtype (`control_model` among them)
            if hasattr(value, "dtype") and value.dtype not in (torch.int, torch.long):
                value.to(self.get_dtype())
        return forge_unet_forward(self.diffusion_model, xc, self.model_sampling.timestep(sigma).float(),
                                  c_crossattn, control, transformer_options)


class UnetPatcher:
    """Forge's UnetPatcher: `clone` shares the module and copies the control chain's head."""

    def __init__(self, model: BaseModel) -> None:
        self.model = model
        self.load_device = self.offload_device = torch.device("cpu")
        self.controlnet_linked_list = None
        self.extra_model_patchers_during_sampling: list = []
        self.block_modifiers: list = []

    def clone(self) -> UnetPatcher:
        clone = UnetPatcher(self.model)
        clone.controlnet_linked_list = self.controlnet_linked_list
        clone.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        clone.block_modifiers = self.block_modifiers.copy()
        return clone

    def add_block_modifier(self, modifier) -> None:
        self.block_modifiers.append(modifier)

    def add_patched_controlnet(self, control) -> None:
        control.set_previous_controlnet(self.controlnet_linked_list)
        self.controlnet_linked_list = control

    def list_controlnets(self) -> list:
        found, pointer = [], self.controlnet_linked_list
        while pointer is not None:
            found.append(pointer)
            pointer = pointer.previous_controlnet
        return found


class OtherControlNet:
    """A Forge ControlNet whose model outputs fixed residuals (ControlBase's chain, merge and step window)."""

    def __init__(self, residuals: list[torch.Tensor], strength: float = 1.0) -> None:
        self.residuals = residuals
        self.strength = strength
        self.previous_controlnet = None
        self.transformer_options: dict = {}
        self.pre_runs = 0

    def set_previous_controlnet(self, control):
        self.previous_controlnet = control
        return self

    def pre_run(self, model, percent_to_timestep_function) -> None:
        self.pre_runs += 1
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def cleanup(self) -> None:
        if self.previous_controlnet is not None:
            self.previous_controlnet.cleanup()

    def get_models(self) -> list:
        return self.previous_controlnet.get_models() if self.previous_controlnet is not None else []

    def inference_memory_requirements(self, dtype) -> int:
        return 0

    def get_control(self, x_noisy, t, cond, batched_number):
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number)
        outs = [r.expand(x_noisy.shape[0], -1, -1, -1) * self.strength for r in self.residuals]
        control = {"input": [], "middle": [outs[-1]], "output": outs[:-1]}
        if previous is not None:  # Forge's control_merge: in place on this control's tensors
            for key in ("input", "middle", "output"):
                for index, value in enumerate(previous[key]):
                    if index >= len(control[key]):
                        control[key].append(value)
                    elif value is not None:
                        control[key][index] += value
        return control


def sampling_prepare(unet_patcher: UnetPatcher) -> list:
    """Forge's `sampling_prepare`: the chain's models join the loaded models; every link gets `pre_run`."""
    models = [unet_patcher] + unet_patcher.extra_model_patchers_during_sampling
    if unet_patcher.controlnet_linked_list is not None:
        models += unet_patcher.controlnet_linked_list.get_models()
    for control in unet_patcher.list_controlnets():
        control.pre_run(unet_patcher.model, lambda percent: percent)
    return models


def calc_cond_uncond(unet_patcher: UnetPatcher, x, sigma, conds: list, uncond, chunks_per_call: int = 99):
    """Forge's `calc_cond_uncond_batch`: one chunk per cond entry (all images) and one for uncond, run
    `chunks_per_call` chunks at a time; returns (cond outputs per entry, uncond output)."""
    to_run = [(text, 0) for text in conds] + ([(uncond, 1)] if uncond is not None else [])
    outputs = []
    while to_run:
        batch, to_run = to_run[:chunks_per_call], to_run[chunks_per_call:]
        cond_or_uncond = [kind for _, kind in batch]
        input_x = torch.cat([x] * len(batch))
        timestep = torch.cat([sigma] * len(batch))
        context = torch.cat([text for text, _ in batch])
        options = {"cond_or_uncond": cond_or_uncond, "sigmas": sigma, "block_modifiers": unet_patcher.block_modifiers,
                   "cond_mark": torch.tensor([float(k) for k in cond_or_uncond for _ in range(x.shape[0])],
                                             device=x.device)}
        control = unet_patcher.controlnet_linked_list
        result = None
        if control is not None:
            pointer = control
            while pointer is not None:
                pointer.transformer_options = options
                pointer = pointer.previous_controlnet
            result = control.get_control(input_x, timestep, {"c_crossattn": context}, len(cond_or_uncond))
        out = unet_patcher.model.apply_model(input_x, timestep, context, control=result, transformer_options=options,
                                             control_model=control)
        outputs += list(out.chunk(len(batch)))
    return outputs


class FakeModel:
    """`p.sd_model`: `forge_objects` reset from a pristine copy before every pass, as Forge's processing does."""

    def __init__(self, unet) -> None:
        self.pristine = UnetPatcher(BaseModel(unet))
        self.forge_objects = SimpleNamespace(unet=self.pristine)

    def reset(self) -> None:
        self.forge_objects = SimpleNamespace(unet=self.pristine)


class FakeP:
    def __init__(self, model: FakeModel) -> None:
        self.sd_model = model
        self.extra_generation_params: dict = {}
        self.width, self.height = LATENT[1] * 8, LATENT[0] * 8
        self.is_hr_pass = False
        self.sample = lambda: "sampled"


def denoiser_params(p, step: int, total: int, model=None):
    inner = SimpleNamespace(inner_model=model or p.sd_model)
    return SimpleNamespace(denoiser=SimpleNamespace(p=p, step=step, total_steps=total, inner_model=inner),
                           sampling_step=step, total_sampling_steps=total)


# -- units for the adapter tests (tests/test_forge_adapter.py, tests/forge_real_chain.py) --


def identity(seed: int = 10, size=LATENT):
    g = torch.Generator().manual_seed(seed)
    hint = torch.rand(1, 9, size[0] * 8, size[1] * 8, generator=g) * 2 - 1
    clip = torch.randn(1, 257, 1024, generator=g)
    face = torch.nn.functional.normalize(torch.randn(1, 1, 512, generator=g), dim=-1)
    return hint, clip, face


def unit_params(**fields):
    return SimpleNamespace(**{"strength": 1.0, "start": 0.0, "end": 1.0, "pose_only": 0.0, **fields})


def make_generation(capfaces, strengths=(1.0,), render_error: Exception | None = None, **fields) -> Generation:
    """A Generation whose units have `identity(seed=10 + i)` and hints rendered as those identities' hints."""
    units, hints = [], []
    for index, strength in enumerate(strengths):
        hint, clip, face = identity(seed=10 + index)
        capface = capfaces[index]
        with torch.no_grad():
            context = capface.identity_context(clip, face)
        units.append(PreparedUnit(unit_params(strength=strength, **fields), capface, context, index))
        hints.append(hint)

    def render(params, width, height):
        if render_error is not None:
            raise render_error
        return hints[[unit.params for unit in units].index(params)]

    return Generation(units, render)
