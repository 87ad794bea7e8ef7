"""CapHuman units in the webui (AUTOMATIC1111, Forge): the UI and the callbacks. The services (models, scorer, photo
store) are `caphuman_ext.services`; what a job does is `caphuman_ext.lifecycle.job`."""

from __future__ import annotations

import sys
from pathlib import Path

from modules import devices, paths, script_callbacks, scripts, shared

EXTENSION_ROOT = Path(__file__).resolve().parents[1]
if str(EXTENSION_ROOT) not in sys.path:
    sys.path.insert(0, str(EXTENSION_ROOT))

from caphuman_ext import external_code  # noqa: E402
from caphuman_ext.hosts import a1111, forge, refine_pass  # noqa: E402
from caphuman_ext.lifecycle import job  # noqa: E402
from caphuman_ext.services import Services  # noqa: E402
from caphuman_ext.unit.api import install_api  # noqa: E402
from caphuman_ext.webui import settings, unit_ui, xyz_axes  # noqa: E402

VERSION = "0.1.0"
SCRIPT_TITLE = "CapHuman"
host = forge.HOST if forge.detected() else a1111.HOST  # the Forge family (Neo, Classic, reForge) or AUTOMATIC1111
services = Services(read_settings=lambda: settings.read_settings(shared, paths, host.low_vram()),
                    photo_root=lambda: settings.photo_root(paths), device=lambda: devices.device,
                    free_memory=devices.torch_gc)
external_code.register_renderer(services.render)


def on_cfg_denoiser(params) -> None:
    job.on_step(params, host)


class Script(scripts.Script):
    def title(self):
        return SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        self.infotext_fields = []
        return unit_ui.build(is_img2img, int(settings.option(shared, "caphuman_units")), services,
                             self.infotext_fields)

    def process(self, p, *args):
        if job.copy_of_a_running_job(p):  # ADetailer sets scripts up again on a copy of the job: not a job
            return
        services.refresh()  # the settings, once per job
        job.start(p, args, host, services, task=getattr(shared.state, "time_start", None))  # set by state.begin()
        if job.generation_of(p) is not None:
            services.after_use()

    def process_before_every_sampling(self, p, *args, **kwargs):
        if job.generation_of(p) is not None and "x" in kwargs:
            job.before_sampling(p, kwargs["x"], host)

    def post_sample(self, p, ps, *args):
        generation = job.generation_of(p)
        if generation is not None:
            host.detach(generation)
            generation.end_sampling()

    def postprocess_image(self, p, pp, *args):
        """Face refine of the units that have it on, one inpaint pass per head; then, with "Score CapHuman results"
        on, each image's scores in its infotext and an overlay kept for the gallery."""
        for plan in job.refine_passes(p, pp.image.size):
            try:
                pp.image = refine_pass.refine(p, pp.image, plan)
            except Exception as error:  # noqa: BLE001 - the image made so far stays; the message says why
                print(f"CapHuman: face refine of unit {plan.position + 1} failed: {error}")
        generation = job.generation_of(p)
        if generation is None or not services.current().score:
            return
        units = [unit for unit, acted in zip(generation.units, generation.acted(), strict=True) if acted]
        if not units:
            return
        try:
            result = services.scorer().score(pp.image, [unit.params for unit in units], overlay=True)
        except Exception as error:  # noqa: BLE001 - a score is extra information: the image stays
            print(f"CapHuman: scoring failed: {error}")
            return
        for face in result.faces:  # keyed by the unit's tab, like its settings
            p.extra_generation_params[f"CapHuman score {units[face.unit].position + 1}"] = face.text()
        if result.overlay is not None:
            generation.extras.append(result.overlay)

    def postprocess(self, p, processed, *args):
        generation = job.generation_of(p)
        if generation is not None and not job.copy_of_a_running_job(p):  # ADetailer calls it on a copy first
            for overlay in generation.extras:
                processed.images.append(overlay)
                if hasattr(processed, "infotexts"):
                    processed.infotexts.append("CapHuman score overlay: target landmarks green, fitted red")
            job.end(p, host)
            services.after_use()


def _on_app_started(demo, app):
    install_api(app, folders=lambda: list(services.refresh().folders), preview=services.preview, version=VERSION,
                script_title=SCRIPT_TITLE, model_files=services.model_files, score=services.score)


script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
script_callbacks.on_ui_settings(lambda: settings.register_options(shared))
script_callbacks.on_app_started(_on_app_started)
script_callbacks.on_before_ui(lambda: xyz_axes.register_axes(scripts.scripts_data))
