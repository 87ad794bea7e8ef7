"""A1111 v1.10.1's generation call sequence, re-enacted around the real CapHuman script with a real `ldm` UNet.

The extension's script imports `modules` (the webui); `install_fake_webui()` puts small stand-ins for the parts it
touches into `sys.modules`. `process_images(p)` then calls the script exactly where modules/processing.py does:
`process` → per batch [reload model → `p.sample` (`process_before_every_sampling` → sampler; hires: hires checkpoint,
`before_hr`, `process_before_every_sampling` → sampler) → `post_sample` → `postprocess_image`] → `postprocess`,
each script call wrapped as the webui's ScriptRunner wraps it (exceptions printed and swallowed). The sampler is the
webui's CFGDenoiser layout (each image's cond rows, repeated per AND sub-prompt, then one uncond row per image; the
`cfg_denoiser` callback; `batch_cond_uncond` chunking; skip-early-CFG; refiner switch) over an Euler loop on SD1.5's
real noise schedule. Images are the final latents (no VAE): tests compare tensors.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
OPT_F = 8


# --- the webui's modules ----------------------------------------------------------------------------------------
class Options(types.SimpleNamespace):
    def add_option(self, key, info):
        setattr(self, key, getattr(info, "default", None))


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, section=None, **kwargs):
        self.default = default


class State(types.SimpleNamespace):
    pass


class Script:
    """modules.scripts.Script as the extension sees it."""

    filename = None
    args_from = 0
    args_to = 0

    def process(self, p, *args):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def before_hr(self, p, *args):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass


@dataclass
class PostSampleArgs:
    samples: torch.Tensor


@dataclass
class PostprocessImageArgs:
    image: object  # a PIL image


def latent_picture(latent: torch.Tensor):
    """A PIL stand-in for the decoded image (no VAE here): three latent channels, 8× upscaled."""
    from PIL import Image

    rgb = ((latent[0, :3].clamp(-3, 3) + 3) / 6 * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(rgb).resize((latent.shape[-1] * OPT_F, latent.shape[-2] * OPT_F))


def picture_latent(picture) -> torch.Tensor:
    """The stand-in VAE's encoder (`latent_picture` back, lossy): 8×8 means of the three channels, a zero fourth."""
    import numpy as np
    from PIL import Image

    small = picture.convert("RGB").resize((picture.width // OPT_F, picture.height // OPT_F), Image.BOX)
    rgb = torch.from_numpy(np.asarray(small, dtype=np.float32)).permute(2, 0, 1) / 255 * 6 - 3
    return torch.cat([rgb, torch.zeros_like(rgb[:1])])[None]


def picture_tensor(picture) -> torch.Tensor:
    """A picture's pixels as a float (3, H, W) tensor (tests compare these)."""
    import numpy as np

    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)


CALLBACKS: dict[str, list] = {}


def _register(name):
    def register(function):
        CALLBACKS.setdefault(name, []).append(function)
    return register


class TorchHijackForUnet:
    """modules/sd_hijack_unet.py: the webui's UNet concatenates skips of another size by resizing `h` (latents that
    are not multiples of 8 cells, e.g. hires ×1.3)."""

    def __getattr__(self, item):
        return getattr(torch, item)

    def cat(self, tensors, *args, **kwargs):
        if len(tensors) == 2:
            a, b = tensors
            if a.shape[-2:] != b.shape[-2:]:
                a = F.interpolate(a, b.shape[-2:], mode="nearest")
            tensors = (a, b)
        return torch.cat(tensors, *args, **kwargs)


def hijack_unet_cat():
    """Apply the webui's UNet `th` hijack to ldm's openaimodel; returns the undo."""
    from ldm.modules.diffusionmodules import openaimodel

    original = openaimodel.th
    openaimodel.th = TorchHijackForUnet()

    def undo():
        openaimodel.th = original
    return undo


def install_fake_webui(models_path: Path) -> types.SimpleNamespace:
    """Put stand-ins for the webui's `modules` into sys.modules; returns them."""
    modules = types.ModuleType("modules")
    modules.__path__ = []
    shared = types.ModuleType("modules.shared")
    shared.opts = Options(batch_cond_uncond=True, skip_early_cond=0.0, caphuman_units=2, caphuman_model_dir="",
                          caphuman_auto_download=False, caphuman_offload=False, caphuman_cache_size=16,
                          refiner_switch_by_sample_steps=True)
    shared.cmd_opts = types.SimpleNamespace(lowvram=False, medvram=False)
    shared.sd_model = None
    shared.state = State(sampling_step=0, sampling_steps=0, interrupted=False, skipped=False, time_start=0.0)
    shared.OptionInfo = OptionInfo
    devices = types.ModuleType("modules.devices")
    devices.device = torch.device("cpu")
    devices.torch_gc = lambda: None
    scripts = types.ModuleType("modules.scripts")
    scripts.Script = Script
    scripts.AlwaysVisible = object()
    scripts.scripts_data = []
    scripts.PostSampleArgs = PostSampleArgs
    scripts.PostprocessImageArgs = PostprocessImageArgs
    callbacks = types.ModuleType("modules.script_callbacks")
    CALLBACKS.clear()
    for name in ("on_cfg_denoiser", "on_ui_settings", "on_app_started", "on_before_ui"):
        setattr(callbacks, name, _register(name))
    paths = types.ModuleType("modules.paths")
    paths.models_path = str(models_path)
    processing = types.ModuleType("modules.processing")
    processing.StableDiffusionProcessingImg2Img = Img2Img
    processing.process_images = process_nested
    for name, module in (("shared", shared), ("devices", devices), ("scripts", scripts),
                         ("script_callbacks", callbacks), ("paths", paths), ("processing", processing)):
        setattr(modules, name, module)
        sys.modules[f"modules.{name}"] = module
    sys.modules["modules"] = modules
    return types.SimpleNamespace(shared=shared, devices=devices, scripts=scripts, callbacks=callbacks)


def load_script_module():
    """The extension's scripts/caphuman_unit.py, imported as the webui does (a fresh module each time)."""
    spec = importlib.util.spec_from_file_location("caphuman_unit_under_test", REPO / "scripts" / "caphuman_unit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- models --------------------------------------------------------------------------------------------------------
def sd15_alphas_cumprod() -> torch.Tensor:
    """SD1.5's schedule: scaled-linear betas 0.00085 → 0.012 over 1000 steps."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class FakeSDModel:
    """What the script reads of `shared.sd_model`: `.model.diffusion_model` (a real ldm UNetModel)."""

    def __init__(self, unet, name: str) -> None:
        self.model = types.SimpleNamespace(diffusion_model=unet, conditioning_key="crossattn")
        self.alphas_cumprod = sd15_alphas_cumprod()
        self.is_sd1 = True
        self.name = name
        self.sd_checkpoint_info = name


# --- prompts --------------------------------------------------------------------------------------------------------
def text_embedding(prompt: str, dim: int = 64) -> torch.Tensor:
    seed = int(hashlib.sha1(prompt.encode()).hexdigest()[:8], 16)
    return torch.randn(1, 77, dim, generator=torch.Generator().manual_seed(seed))


@dataclass
class Multicond:
    """prompt_parser.MulticondLearnedConditioning: per image, its AND sub-prompts (embedding, weight)."""

    batch: list[list[tuple[torch.Tensor, float]]]

    @classmethod
    def of(cls, prompts: list[str]) -> Multicond:
        return cls([[(text_embedding(part.strip()), 1.0) for part in prompt.split(" AND ")] for prompt in prompts])


# --- the sampler (k-diffusion Euler with the webui's CFGDenoiser) ---------------------------------------------------
@dataclass
class UNetCall:
    unet: object
    rows: int
    hooked: bool
    is_hr_pass: bool


CALL_LOG: list[UNetCall] = []


def _hooked(unet) -> bool:
    from caphuman_ext.hook import UNetHook

    return any(isinstance(getattr(h, "__self__", None), UNetHook) for h in unet._forward_pre_hooks.values())


def sampling_sigmas(steps: int, karras: bool) -> torch.Tensor:
    alphas = sd15_alphas_cumprod()
    all_sigmas = ((1 - alphas) / alphas) ** 0.5
    if karras:
        low, high, rho = all_sigmas[0].item(), all_sigmas[-1].item(), 7.0
        ramp = torch.linspace(0, 1, steps)
        sigmas = (high ** (1 / rho) + ramp * (low ** (1 / rho) - high ** (1 / rho))) ** rho
    else:
        t = torch.linspace(999, 0, steps)
        sigmas = torch.from_numpy(__import__("numpy").interp(t.numpy(), range(1000), all_sigmas.numpy())).float()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    alphas = sd15_alphas_cumprod()
    log_sigmas = (((1 - alphas) / alphas) ** 0.5).log()
    return (log_sigmas[None] - sigma.log()[:, None]).abs().argmin(1).float()


class Sampler:
    def __init__(self, p) -> None:
        self.p = p
        self.sampler_extra_args: dict = {}

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None):
        sigmas = sampling_sigmas(steps or p.steps, p.karras)
        return self._run(p, x * sigmas[0], sigmas, conditioning, unconditional_conditioning)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None):
        steps = steps or p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
        sigmas = sampling_sigmas(steps, p.karras)[steps - t_enc - 1:]
        return self._run(p, x + noise * sigmas[0], sigmas, conditioning, unconditional_conditioning)

    def _run(self, p, x, sigmas, cond, uncond):
        from modules import shared

        self.sampler_extra_args = {"cond": cond, "uncond": uncond}
        denoiser = CFGDenoiser(p, self, total_steps=len(sigmas) - 1)
        shared.state.sampling_steps, shared.state.sampling_step = len(sigmas) - 1, 0
        for i in range(len(sigmas) - 1):
            denoised = denoiser(x, sigmas[i].expand(x.shape[0]))
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            shared.state.sampling_step = i
        return x


@dataclass
class DenoiserParams:
    x: torch.Tensor
    image_cond: torch.Tensor | None
    sigma: torch.Tensor
    sampling_step: int
    total_sampling_steps: int
    text_cond: torch.Tensor
    text_uncond: torch.Tensor
    denoiser: object


class CFGDenoiser:
    """modules/sd_samplers_cfg_denoiser.py's row layout and call pattern."""

    def __init__(self, p, sampler: Sampler, total_steps: int) -> None:
        self.p, self.sampler, self.step, self.total_steps = p, sampler, 0, total_steps

    def _apply_refiner(self) -> None:
        from modules import shared

        p = self.p
        if p.refiner is None or shared.sd_model is p.refiner or self.step / self.total_steps < p.refiner_switch_at:
            return
        shared.sd_model = p.refiner

    def __call__(self, x, sigma):
        from modules import shared

        self._apply_refiner()
        conds = self.sampler.sampler_extra_args["cond"].batch
        uncond = torch.cat([text_embedding(self.p.negative_prompt)] * len(conds))
        repeats = [len(c) for c in conds]
        tensor = torch.cat([e for c in conds for e, _ in c])
        x_in = torch.cat([torch.stack([x[i]] * n) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i]] * n) for i, n in enumerate(repeats)] + [sigma])
        params = DenoiserParams(x_in, None, sigma_in, shared.state.sampling_step, shared.state.sampling_steps,
                                tensor, uncond, self)
        for callback in CALLBACKS.get("on_cfg_denoiser", []):
            swallow(callback, params)
        x_in, sigma_in = params.x, params.sigma
        batch = len(conds)
        skip_uncond = shared.opts.skip_early_cond and self.step / self.total_steps <= shared.opts.skip_early_cond
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch], sigma_in[:-batch]
        cond_in = tensor if skip_uncond else torch.cat([tensor, uncond])
        if shared.opts.batch_cond_uncond:
            out = self.model(x_in, sigma_in, cond_in)
        else:
            out = torch.cat([self.model(x_in[a:a + batch], sigma_in[a:a + batch], cond_in[a:a + batch])
                             for a in range(0, x_in.shape[0], batch)])
        if skip_uncond:
            out = torch.cat([out, torch.cat([out[sum(repeats[:i]):sum(repeats[:i]) + 1] for i in range(batch)])])
        denoised = out[-batch:].clone()
        offset = 0
        for i, subprompts in enumerate(conds):
            for _, weight in subprompts:
                denoised[i] += (out[offset] - out[-batch + i]) * weight * self.p.cfg_scale
                offset += 1
        self.step += 1
        return denoised

    def model(self, x, sigma, context):
        """CompVisDenoiser: eps prediction of the UNet the webui samples now."""
        from modules import shared

        unet = shared.sd_model.model.diffusion_model
        c_in = 1 / (sigma ** 2 + 1) ** 0.5
        CALL_LOG.append(UNetCall(unet, x.shape[0], _hooked(unet), getattr(self.p, "is_hr_pass", False)))
        eps = self.p.unet_call(unet, x * c_in[:, None, None, None], sigma_to_t(sigma), context)
        return x - eps * sigma[:, None, None, None]


# --- processing -----------------------------------------------------------------------------------------------------
def swallow(function, *args, **kwargs):
    """The webui's ScriptRunner / script_callbacks: every exception is printed and swallowed."""
    try:
        return function(*args, **kwargs)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return None


class RunnerScript:
    """A script as the webui's ScriptRunner holds it: its range of `p.script_args` (args_from, args_to)."""

    def __init__(self, script, args_from: int, args_to: int) -> None:
        self.script, self.args_from, self.args_to = script, args_from, args_to

    def __getattr__(self, name):
        return getattr(self.script, name)


@dataclass
class Processing:
    """The fields of StableDiffusionProcessingTxt2Img / Img2Img that the sequence and the script read."""

    script: object
    script_args: tuple
    base: FakeSDModel
    prompt: str | list[str] = "a portrait"
    negative_prompt: str = ""
    width: int = 128
    height: int = 128
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 4
    cfg_scale: float = 5.0
    seed: int = 1
    karras: bool = False
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint: FakeSDModel | None = None
    denoising_strength: float = 0.5
    refiner: FakeSDModel | None = None
    refiner_switch_at: float = 0.5
    init_latent: torch.Tensor | None = None  # img2img: the encoded init image
    init_images: list = field(default_factory=list)
    inpaint_full_res: bool = False
    paste_to: tuple | None = None
    mask_for_overlay: object = None
    postprocess_image_pass: object = None  # a callable (p, latent) -> latent or picture, run before the script's
    # postprocess_image, like ADetailer's (whose file name "!adetailer.py" sorts first)
    scripts: object = None  # the script runner (made from `script`); a nested job names its scripts here
    image_mask: object = None  # img2img inpaint: the mask (PIL "L"), white where to inpaint
    mask_blur: int = 4
    inpaint_full_res_padding: int = 32
    pictures: list = field(default_factory=list)  # the decoded images after postprocess_image (pp.image)
    unet_forward: object = None  # replaces how the UNet is called (ControlNet-like forward, Deep Shrink, tiles)
    extra_generation_params: dict = field(default_factory=dict)
    is_hr_pass: bool = False
    truncate_x: int = 0
    truncate_y: int = 0
    iteration: int = 0

    def __post_init__(self) -> None:
        if self.scripts is None and self.script is not None:  # the runner gives each script its argument range
            self.scripts = types.SimpleNamespace(alwayson_scripts=[RunnerScript(self.script, 0,
                                                                                len(self.script_args))])

    @property
    def sd_model(self):
        from modules import shared

        return shared.sd_model

    def close(self) -> None:
        pass

    def unet_call(self, unet, x, t, context):
        if self.unet_forward is not None:
            return self.unet_forward(unet, x, t, context)
        return unet(x, t, context=context)

    # StableDiffusionProcessingTxt2Img.calculate_target_resolution
    def calculate_target_resolution(self) -> None:
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            self.hr_upscale_to_x, self.hr_upscale_to_y = int(self.width * self.hr_scale), \
                int(self.height * self.hr_scale)
            return
        target_w, target_h = self.hr_resize_x, self.hr_resize_y
        if self.width / self.height < target_w / target_h:
            self.hr_upscale_to_x, self.hr_upscale_to_y = target_w, target_w * self.height // self.width
        else:
            self.hr_upscale_to_x, self.hr_upscale_to_y = target_h * self.width // self.height, target_h
        self.truncate_x = (self.hr_upscale_to_x - target_w) // OPT_F
        self.truncate_y = (self.hr_upscale_to_y - target_h) // OPT_F

    def sample(self, conditioning, unconditional_conditioning, seeds, **kwargs):
        from modules import shared

        self.sampler = Sampler(self)
        noise = torch.cat([torch.randn(1, 4, self.height // OPT_F, self.width // OPT_F,
                                       generator=torch.Generator().manual_seed(s)) for s in seeds])
        if self.init_latent is not None:  # img2img
            x = self.init_latent.expand(len(seeds), -1, -1, -1).clone()
            swallow(self.script.process_before_every_sampling, self, *self.script_args, x=x, noise=noise,
                    c=conditioning, uc=unconditional_conditioning)
            noise = torch.cat([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(s))[None]
                               for s in seeds])
            return self.sampler.sample_img2img(self, x, noise, conditioning, unconditional_conditioning)
        swallow(self.script.process_before_every_sampling, self, *self.script_args, x=noise, noise=noise,
                c=conditioning, uc=unconditional_conditioning)
        samples = self.sampler.sample(self, noise, conditioning, unconditional_conditioning)
        if not self.enable_hr:
            return samples
        if self.hr_checkpoint is not None:
            shared.sd_model = self.hr_checkpoint
        self.is_hr_pass = True
        self.sampler = Sampler(self)
        samples = F.interpolate(samples, size=(self.hr_upscale_to_y // OPT_F, self.hr_upscale_to_x // OPT_F),
                                mode="bilinear", antialias=False)
        samples = samples[:, :, self.truncate_y // 2:samples.shape[2] - (self.truncate_y + 1) // 2,
                          self.truncate_x // 2:samples.shape[3] - (self.truncate_x + 1) // 2]
        noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(seeds[0]))
        swallow(self.script.before_hr, self, *self.script_args)
        swallow(self.script.process_before_every_sampling, self, *self.script_args, x=samples, noise=noise,
                c=conditioning, uc=unconditional_conditioning)
        return self.sampler.sample_img2img(self, samples, noise, conditioning, unconditional_conditioning)


_NESTED = [0]  # jobs running now: a job started inside another (ADetailer's pass) is part of the same task


def process_images(p: Processing) -> list[torch.Tensor]:
    """modules/processing.py process_images_inner for the parts CapHuman meets; returns each image's final latent.
    A top-level call is a new task (the UI's or API's `shared.state.begin()` sets `time_start`)."""
    from modules import shared

    if not _NESTED[0]:
        shared.state.time_start += 1.0
    _NESTED[0] += 1
    try:
        with torch.no_grad():
            return _process_images(p)
    finally:
        _NESTED[0] -= 1


def Img2Img(**fields) -> Processing:  # noqa: N802 - modules.processing.StableDiffusionProcessingImg2Img
    """A nested img2img job as another extension builds it (`sd_model`, `init_images`, `mask`, `inpaint_full_res`,
    ...); its `scripts` and `script_args` are set by the caller before `process_images`."""
    known = {f for f in Processing.__dataclass_fields__}
    values = {k: v for k, v in fields.items() if k in known}
    values["image_mask"] = fields.get("mask")
    return Processing(script=None, script_args=(), base=fields["sd_model"], **values)


def crop_region(mask, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Inpaint "only masked": the mask's box grown by `padding`, then to the job's aspect (width:height), inside the
    picture (what modules/masking.py's get_crop_region_v2 + expand_crop_region do)."""
    import numpy as np

    ys, xs = np.nonzero(np.asarray(mask) > 0)
    x1, y1 = max(0, int(xs.min()) - padding), max(0, int(ys.min()) - padding)
    x2, y2 = min(mask.width, int(xs.max()) + 1 + padding), min(mask.height, int(ys.max()) + 1 + padding)
    w, h = x2 - x1, y2 - y1
    if w / h < width / height:
        grow = min(mask.width, round(h * width / height)) - w
        x1 = max(0, min(mask.width - (w + grow), x1 - grow // 2))
        x2 = x1 + w + grow
    else:
        grow = min(mask.height, round(w * height / width)) - h
        y1 = max(0, min(mask.height - (h + grow), y1 - grow // 2))
        y2 = y1 + h + grow
    return x1, y1, x2, y2


def process_nested(p: Processing) -> types.SimpleNamespace:
    """modules.processing.process_images for a nested img2img inpaint job: the picture cropped (only masked) and
    encoded, sampled through the scripts the caller kept, decoded, pasted back through the blurred mask."""
    from PIL import Image, ImageFilter

    scripts = list(p.scripts.alwayson_scripts) if p.scripts is not None else []
    if len(scripts) > 1:
        raise NotImplementedError("the simulated nested job runs at most one script")
    script = scripts[0] if scripts else RunnerScript(Script(), 0, 0)
    p.script, p.script_args = script.script, tuple(p.script_args[script.args_from:script.args_to])
    original = p.init_images[0].convert("RGB")
    work, region = original.resize((p.width, p.height)), None
    if p.image_mask is not None:
        mask = p.image_mask.convert("L")
        if p.mask_blur:
            mask = mask.filter(ImageFilter.GaussianBlur(p.mask_blur))
        p.mask_for_overlay = mask
        if p.inpaint_full_res:
            region = crop_region(mask, p.inpaint_full_res_padding, p.width, p.height)
            p.paste_to = (region[0], region[1], region[2] - region[0], region[3] - region[1])
            work = original.crop(region).resize((p.width, p.height), Image.LANCZOS)
    p.init_latent = picture_latent(work)
    process_images(p)
    images = []
    for picture in p.pictures:
        if region is not None:
            whole = original.copy()
            whole.paste(picture.resize((region[2] - region[0], region[3] - region[1]), Image.LANCZOS), region[:2])
        else:
            whole = picture.resize(original.size)
        images.append(whole if p.image_mask is None else Image.composite(whole, original, p.mask_for_overlay))
    return types.SimpleNamespace(images=images, infotexts=[""] * len(images))


def _process_images(p: Processing) -> list[torch.Tensor]:
    from modules import shared

    if shared.sd_model is None:  # else at `process` the webui still holds the last job's model (its refiner too)
        shared.sd_model = p.base
    prompts = p.prompt if isinstance(p.prompt, list) else [p.prompt] * (p.batch_size * p.n_iter)
    swallow(p.script.process, p, *p.script_args)
    if p.enable_hr:
        p.calculate_target_resolution()
    images = []
    for n in range(p.n_iter):
        p.iteration = n
        shared.sd_model = p.base  # sd_models.reload_model_weights(): the refiner / hires checkpoint goes
        p.is_hr_pass = False
        batch_prompts = prompts[n * p.batch_size:(n + 1) * p.batch_size]
        seeds = [p.seed + n * p.batch_size + i for i in range(len(batch_prompts))]
        samples = p.sample(conditioning=Multicond.of(batch_prompts), unconditional_conditioning=None, seeds=seeds)
        post = PostSampleArgs(samples)
        swallow(p.script.post_sample, p, post, *p.script_args)
        for image in post.samples:
            image = image[None]
            if p.postprocess_image_pass is not None:
                image = p.postprocess_image_pass(p, image)
            if isinstance(image, torch.Tensor):
                picture = latent_picture(image)
            else:
                picture, image = image, picture_latent(image)
            pp = PostprocessImageArgs(picture)
            swallow(p.script.postprocess_image, p, pp, *p.script_args)
            p.pictures.append(pp.image)
            images.append(image)
    p.processed = types.SimpleNamespace(images=list(images), infotexts=[""] * len(images))
    swallow(p.script.postprocess, p, p.processed, *p.script_args)
    return images


def no_caphuman_hooks(*unets) -> bool:
    return not any(_hooked(u) or any(m._forward_pre_hooks or m._forward_hooks for m in u.modules()) for u in unets)

