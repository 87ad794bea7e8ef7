"""Run one CapHuman step through a real Forge's sampling code (no webui, no checkpoint) and compare with the A1111 hook.

    python tests/forge_real_chain.py FORGE_SOURCE_DIR [EXTRA_SITE_DIR]

FORGE_SOURCE_DIR holds a Forge checkout's `ldm_patched` + `modules_forge` (Forge Classic, reForge) or `backend` +
`packages_3rdparty` (Forge 2, the base of Forge Neo). Forge's own modules are imported from there: its UNet (tiny SD1
shape, loaded with a tiny ldm UNet's weights), UnetPatcher, ControlNet chain with one of its real ControlNets
(Classic / reForge), `sampling_prepare` / sampling function / `sampling_cleanup`. Prints the largest difference
between Forge's output with CapHuman and the A1111 hook's on the ldm UNet (same latent, sigma, hints, identities),
the chain with a Forge ControlNet, the error path and a plain step afterwards. Not part of CI (needs Forge's sources;
their extra imports, e.g. psutil, torchsde, gguf, diffusers, go in EXTRA_SITE_DIR).
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
STUBS = {  # the few webui modules Forge's sampling code reads
    "__init__.py": "",
    "shared.py": "from types import SimpleNamespace\nopts = SimpleNamespace(fp8_storage=False, fp8_fast=False, "
                 "prefer_vae_precision_float16=False)\nsd_model = SimpleNamespace(is_sdxl=False)\n",
    "safe.py": "import pickle\nRestrictedUnpickler = pickle.Unpickler\n",
    "errors.py": "def print_error_explanation(message):\n    print(message)\n",
    "sd_samplers_kdiffusion_smea.py": "class Rescaler:\n    pass\n",
}
CHANNELS = dict(model_channels=32, channel_mult=[1, 2, 2, 2], num_res_blocks=[2, 2, 2, 2], context_dim=64,
                num_heads=8, transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])


def setup_paths(forge_dir: Path, site: Path | None) -> None:
    stubs = Path(tempfile.mkdtemp()) / "modules"
    stubs.mkdir()
    for name, text in STUBS.items():
        (stubs / name).write_text(text)
    sys.path[:0] = [str(p) for p in (site, stubs.parent, forge_dir, REPO) if p is not None]
    flux = types.ModuleType("diffusers.pipelines.flux.pipeline_flux")  # Flux only (needs an older transformers)
    flux.calculate_shift = lambda *args, **kwargs: None
    sys.modules["diffusers.pipelines.flux.pipeline_flux"] = flux


def classic_family(ldm_unet):
    """(UnetPatcher, model_sampling, step(patcher, x, sigma, text, uncond), a real ControlNet or None)."""
    import torch
    from ldm_patched.modules import args_parser
    args_parser.args.always_cpu = True
    from ldm_patched.controlnet import cldm
    from ldm_patched.modules import controlnet, model_base, samplers, supported_models
    from modules_forge import forge_sampler
    from modules_forge.unet_patcher import UnetPatcher

    from tests.core_helpers import randomize

    config = supported_models.SD15({**CHANNELS, "use_linear_in_transformer": False, "adm_in_channels": None,
                                    "use_temporal_attention": False, "in_channels": 4, "out_channels": 4,
                                    "use_spatial_transformer": True, "num_head_channels": -1, "image_size": 32})
    base = model_base.BaseModel(config, device=torch.device("cpu"))
    base.diffusion_model.load_state_dict(ldm_unet.state_dict(), strict=True)
    base.eval()
    cpu = torch.device("cpu")
    patcher = UnetPatcher(base, load_device=cpu, offload_device=cpu)

    def step(unet, x, sigma, text, uncond):
        c, u = forge_sampler.cond_from_a1111_to_patched_ldm(text), forge_sampler.cond_from_a1111_to_patched_ldm(uncond)
        return run(unet, samplers.sampling_function, forge_sampler, x, sigma, c, u)

    net = cldm.ControlNet(image_size=32, in_channels=4, hint_channels=3, use_spatial_transformer=True,
                          use_linear_in_transformer=False, device="cpu",
                          **{k: v for k, v in CHANNELS.items() if k != "transformer_depth_output"})
    real = controlnet.ControlNet(randomize(net, seed=9), load_device=cpu)
    from modules_forge.controlnet import apply_controlnet_advanced
    return patcher, base.model_sampling, step, (real, apply_controlnet_advanced)


def forge2_family(ldm_unet):
    import torch
    from backend.args import args
    args.always_cpu = True
    from backend.modules.k_model import KModel
    from backend.modules.k_prediction import Prediction
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.patcher.unet import UnetPatcher
    from backend.sampling import sampling_function as sf
    from backend.sampling.condition import compile_conditions

    unet = IntegratedUNet2DConditionModel(in_channels=4, out_channels=4, use_spatial_transformer=True, **CHANNELS)
    unet.load_state_dict(ldm_unet.state_dict(), strict=True)
    unet.eval()
    unet.storage_dtype = unet.computation_dtype = torch.float32
    predictor = Prediction(sigma_data=1.0, prediction_type="epsilon", beta_schedule="linear", linear_start=0.00085,
                           linear_end=0.012, timesteps=1000)
    cpu = torch.device("cpu")
    patcher = UnetPatcher(KModel(unet, diffusers_scheduler=None, k_predictor=predictor), load_device=cpu,
                          offload_device=cpu, current_device=cpu)

    def step(unet_patcher, x, sigma, text, uncond):
        return run(unet_patcher, sf.sampling_function_inner, sf, x, sigma, compile_conditions(text),
                   compile_conditions(uncond))

    return patcher, predictor, step, None


def run(unet_patcher, sampling_function, module, x, sigma, cond, uncond):
    """Forge's step: conds get the chain, sampling_prepare, the sampling function (UNet rows kept), cleanup."""
    control = unet_patcher.controlnet_linked_list
    if control is not None:
        for entry in cond + uncond:
            entry["control"] = control
    module.sampling_prepare(unet_patcher, x)
    try:
        rows = {}

        def keep(apply_model, args):
            rows["out"] = apply_model(args["input"], args["timestep"], **args["c"])
            return rows["out"]

        options = {**unet_patcher.model_options, "model_function_wrapper": keep}
        sampling_function(unet_patcher.model, x, sigma, uncond, cond, 7.0, options, 0)
        return rows["out"]
    finally:
        module.sampling_cleanup(unet_patcher)


def main(forge_dir: Path, site: Path | None) -> None:
    setup_paths(forge_dir, site)
    import torch

    from caphuman_ext import UNetHook, blocks
    from caphuman_ext import capface as capface_module
    from caphuman_ext.hosts import forge
    from caphuman_ext.lifecycle import full_frame
    from caphuman_ext.rows import RowPlan
    from tests.core_helpers import TINY_CAPFACE, random_capface, tiny_unet
    from tests.forge_harness import LATENT, make_generation

    ldm_unet = tiny_unet(seed=1)
    neo = (forge_dir / "backend").is_dir()
    patcher, sampling, step, real_controlnet = (forge2_family if neo else classic_family)(ldm_unet)
    ldm_capfaces = random_capface(seed=2), random_capface(seed=3)
    capfaces = ldm_capfaces
    if neo:  # CapFace from backend.nn.unet, as Forge Neo (no `ldm`) builds it
        original, capface_module.ldm_blocks = capface_module.ldm_blocks, blocks.backend_blocks
        capfaces = tuple(capface_module.CapFace(TINY_CAPFACE).eval() for _ in ldm_capfaces)
        capface_module.ldm_blocks = original
        for built, reference in zip(capfaces, ldm_capfaces):
            built.load_state_dict(reference.state_dict(), strict=True)
    print("Forge UNet:", type(patcher.model.diffusion_model).__module__, "| CapFace blocks:",
          type(capfaces[0].input_blocks[1][0]).__module__)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, *LATENT, generator=g)
    text, uncond = torch.randn(2, 77, 64, generator=g), torch.randn(2, 77, 64, generator=g)
    sigma = sampling.sigma(torch.tensor([700.0, 700.0]))
    with torch.no_grad():
        plain = step(patcher, x, sigma, text, uncond)
        generation = make_generation(capfaces, (0.6, 1.4))
        model = SimpleNamespace(forge_objects=SimpleNamespace(unet=patcher))
        generation.prepare_pass(full_frame(LATENT), LATENT, adopt=forge.HOST.adopt)
        forge.HOST.attach(generation, model)
        steered = step(model.forge_objects.unet, x, sigma, text, uncond)

        reference = make_generation(ldm_capfaces, (0.6, 1.4))
        reference.prepare_pass(full_frame(LATENT), LATENT)
        reference.engine.plan = RowPlan.fixed([0, 1, 0, 1])
        hook = UNetHook(ldm_unet, reference.engine).install()
        xc, ts = sampling.calculate_input(sigma, x), sampling.timestep(sigma).float()
        hooked = [torch.cat([x, x]) - ldm_unet(torch.cat([xc, xc]), torch.cat([ts, ts]), context=context)
                  * torch.cat([sigma, sigma]).view(-1, 1, 1, 1)
                  for context in (torch.cat([uncond, text]), torch.cat([text, uncond]))]  # either row order
        hook.remove()
        reference.close()
        print(f"max |Forge + CapHuman - A1111 hook| = {min((steered - h).abs().max().item() for h in hooked):.3g}, "
              f"max |Forge + CapHuman - plain Forge| = {(steered - plain).abs().max().item():.3g}, "
              f"units acted: {generation.acted()}")

        if real_controlnet is not None:
            controlnet, apply_controlnet_advanced = real_controlnet
            hint = torch.rand(1, 3, LATENT[0] * 8, LATENT[1] * 8, generator=g)
            with_cn = apply_controlnet_advanced(patcher, controlnet, hint, 0.8, 0.0, 1.0)
            both = SimpleNamespace(forge_objects=SimpleNamespace(unet=with_cn))
            forge.HOST.attach(generation, both)
            together = step(both.forge_objects.unet, x, sigma, text, uncond)
            alone = step(with_cn, x, sigma, text, uncond)
            print("chain:", [type(c).__name__ for c in both.forge_objects.unet.list_controlnets()],
                  f"max |both - ControlNet alone| = {(together - alone).abs().max().item():.3g}, "
                  f"max |both - CapHuman alone| = {(together - steered).abs().max().item():.3g}")

        generation.fail("CapHuman: a test error")
        try:
            step(model.forge_objects.unet, x, sigma, text, uncond)
            print("error path: NOT RAISED")
        except Exception as error:  # noqa: BLE001 - printed
            print(f"error path: {type(error).__name__}: {error}")
        print("plain step afterwards bit-identical:", torch.equal(step(patcher, x, sigma, text, uncond), plain))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else None)
