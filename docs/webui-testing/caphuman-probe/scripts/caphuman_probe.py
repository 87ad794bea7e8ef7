"""Test-only webui extension: records which CapHuman hooks sit on the UNet just sampled (after each step's model
call), and runs an
ADetailer-like second img2img pass from `postprocess_image` (a fixed input image, no scripts of its own).

Enable per request with `"alwayson_scripts": {"caphuman probe": {"args": [true]}}`; read (and clear) the record with
`GET /caphuman-probe/v1/log`. Install by linking this folder into the webui's `extensions/`.
"""

from __future__ import annotations

import base64
import io

import gradio as gr
import numpy as np
import torch
from modules import processing, script_callbacks, scripts, shared

_LOG: list[dict] = []
_SECOND_PASS: dict = {}


def _owner(fn) -> str:
    """Module that defined a hook callable (function, bound method, partial or callable object)."""
    fn = getattr(fn, "func", fn)
    fn = getattr(fn, "__func__", fn)
    return getattr(fn, "__module__", None) or type(fn).__module__


def caphuman_hooks(unet: torch.nn.Module) -> list[str]:
    """'<submodule>:<kind>' for every forward hook / pre-hook / instance forward defined by CapHuman code."""
    found = []
    for name, module in unet.named_modules():
        callables = [("hook", h) for h in module._forward_hooks.values()]
        callables += [("pre_hook", h) for h in module._forward_pre_hooks.values()]
        if "forward" in module.__dict__:
            callables.append(("forward", module.__dict__["forward"]))
        found += [f"{name or 'unet'}:{kind}" for kind, fn in callables if "caphuman" in _owner(fn).lower()]
    found += [f"global:{_owner(h)}" for h in torch.nn.modules.module._global_forward_hooks.values()
              if "caphuman" in _owner(h).lower()]
    return found


def caphuman_controls(model) -> list[str]:
    """Forge: 'control:<class>' for every CapHuman link in the ControlNet chain of the UnetPatcher that `model`
    samples (`forge_objects.unet.controlnet_linked_list`); [] elsewhere."""
    unet_patcher = getattr(getattr(model, "forge_objects", None), "unet", None)
    found, link = [], getattr(unet_patcher, "controlnet_linked_list", None)
    while link is not None:
        if "caphuman" in type(link).__module__.lower():
            found.append(f"control:{type(link).__name__}")
        link = getattr(link, "previous_controlnet", None)
    return found


def _sampled_model(denoiser, params):
    """The model object sampled at this step: the denoiser's (follows a refiner switch), else shared.sd_model."""
    for owner in (getattr(denoiser, "inner_model", None), getattr(params, "inner_model", None)):
        inner = getattr(owner, "inner_model", None)
        if inner is not None and (hasattr(inner, "forge_objects") or hasattr(inner, "model")):
            return inner
    return shared.sd_model


def _unet(model):
    """The UNet module sampled: Forge's UnetPatcher's, else ldm's."""
    unet_patcher = getattr(getattr(model, "forge_objects", None), "unet", None)
    if unet_patcher is not None:
        return unet_patcher.model.diffusion_model
    return model.model.diffusion_model


def _checkpoint(model) -> str | None:
    info = getattr(model, "sd_checkpoint_info", None) or getattr(shared.sd_model, "sd_checkpoint_info", None)
    return info and info.short_title


_DENOISER: dict = {}


def _on_cfg_denoiser(params) -> None:
    """Remember the denoiser of this step; the UNet is inspected after its call (`on_cfg_denoised`), when every
    extension's step callback (CapHuman moving its hook to a refiner's UNet included) has run."""
    _DENOISER["now"] = params.denoiser


def _on_cfg_denoised(params) -> None:
    denoiser = _DENOISER.pop("now", None)
    p = getattr(denoiser, "p", None)
    if p is None or not (getattr(p, "caphuman_probe", False) or getattr(p, "caphuman_probe_second_pass", False)):
        return
    model = _sampled_model(denoiser, params)  # k-diffusion wraps the model
    unet = _unet(model)
    phase = "second_pass" if getattr(p, "caphuman_probe_second_pass", False) else \
        ("hires" if getattr(p, "is_hr_pass", False) else "first")
    record = {"phase": phase, "unet": id(unet), "checkpoint": _checkpoint(model),
              "hooks": caphuman_hooks(unet) + caphuman_controls(model)}
    if not _LOG or any(_LOG[-1][k] != v for k, v in record.items()):
        _LOG.append({**record, "steps": 0})
    _LOG[-1]["steps"] += 1


script_callbacks.on_cfg_denoiser(_on_cfg_denoiser)
script_callbacks.on_cfg_denoised(_on_cfg_denoised)
# Forge Neo and Classic never call the cfg_denoised callbacks; after_cfg comes later in the same step on every host
# (on A1111 the cfg_denoised record has taken the denoiser by then, so the step is recorded once)
script_callbacks.on_cfg_after_cfg(_on_cfg_denoised)


def _fixed_image():
    from PIL import Image

    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))


class Script(scripts.Script):
    def title(self):
        return "CapHuman probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Checkbox(value=False, visible=False)]

    def process(self, p, enabled=False, *args):
        p.caphuman_probe = bool(enabled)

    def postprocess_image(self, p, pp, enabled=False, *args):
        if not enabled or getattr(p, "caphuman_probe_second_pass", False):
            return
        from PIL import Image

        mask = Image.new("L", (128, 128), 0)
        mask.paste(255, (32, 32, 96, 96))
        second = processing.StableDiffusionProcessingImg2Img(
            sd_model=shared.sd_model, init_images=[_fixed_image()], mask=mask, prompt="a face", steps=4,
            width=128, height=128, seed=99, sampler_name="Euler", denoising_strength=0.5, inpaint_full_res=True,
            inpaint_full_res_padding=8, do_not_save_samples=True, do_not_save_grid=True)
        second.caphuman_probe_second_pass = True
        second.scripts = None  # ADetailer runs its pass with a filtered script runner: no CapHuman there
        result = processing.process_images(second)
        buffer = io.BytesIO()
        result.images[0].save(buffer, format="PNG")
        _SECOND_PASS.setdefault("images", []).append(base64.b64encode(buffer.getvalue()).decode())


def _on_app_started(demo, app):
    @app.get("/caphuman-probe/v1/log")
    def read_log():
        answer = {"log": list(_LOG), "second_pass_images": _SECOND_PASS.pop("images", [])}
        _LOG.clear()
        return answer


script_callbacks.on_app_started(_on_app_started)
