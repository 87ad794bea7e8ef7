"""CapHuman units in AUTOMATIC1111 (txt2img / img2img): UI, generation lifecycle, API. Logic lives in caphuman_ext."""

from __future__ import annotations

import sys
from pathlib import Path

from modules import devices, script_callbacks, scripts, shared

EXTENSION_ROOT = Path(__file__).resolve().parents[1]
if str(EXTENSION_ROOT) not in sys.path:
    sys.path.insert(0, str(EXTENSION_ROOT))

from caphuman_ext import external_code  # noqa: E402
from caphuman_ext.hosts import a1111, forge, refine_pass  # noqa: E402
from caphuman_ext.lifecycle import job  # noqa: E402
from caphuman_ext.model_files import download, model_status  # noqa: E402
from caphuman_ext.model_files_panel import build_model_files_panel  # noqa: E402
from caphuman_ext.unit.api import install_api  # noqa: E402
from caphuman_ext.unit.builder import UnitBuilder  # noqa: E402
from caphuman_ext.unit.infotext import infotext_key, to_infotext  # noqa: E402
from caphuman_ext.unit.models import list_capface_models, model_folders  # noqa: E402
from caphuman_ext.unit.params import DETAIL_PASSES, FIELD_ORDER, PASSES, check_passes, unit_from_dict  # noqa: E402
from caphuman_ext.unit.paste import PastedUnit, pasted_unit  # noqa: E402
from caphuman_ext.unit.photo_store import PhotoStore  # noqa: E402
from preprocessors.head.codes import MODES  # noqa: E402
from preprocessors.head.frames import RESIZE_MODES  # noqa: E402
from preprocessors.identity.clip_files import controlnet_annotator_dirs  # noqa: E402

VERSION = "0.1.0"
host = forge.HOST if forge.detected() else a1111.HOST  # the Forge family (Neo, Classic, reForge) or AUTOMATIC1111
SCRIPT_TITLE = "CapHuman"


def _opt(name: str, default):
    return getattr(shared.opts, name, default)


def _folders() -> list[Path]:
    from modules import paths

    extra = [Path(p) for p in [_opt("caphuman_model_dir", "")] if p]
    return model_folders(Path(paths.models_path), extra)


def _annotator_dirs() -> list[Path]:
    """sd-webui-controlnet's annotator folders (a CLIP ViT-L/14 copy many users already have)."""
    from modules import paths

    options = getattr(shared.opts, "data", None) or {}
    return controlnet_annotator_dirs(
        extension_dirs=[p for p in (getattr(paths, "extensions_dir", None),
                                    getattr(paths, "extensions_builtin_dir", None)) if p],
        annotator_models_path=getattr(getattr(shared, "cmd_opts", None), "controlnet_annotator_models_path", None),
        modules_path_setting=options.get("control_net_modules_path"), data_path=getattr(paths, "data_path", None))


_BUILDER: UnitBuilder | None = None


def builder() -> UnitBuilder:
    global _BUILDER
    settings = (_folders(), _opt("caphuman_auto_download", True), int(_opt("caphuman_cache_size", 16)),
                _annotator_dirs())
    if _BUILDER is None or (_BUILDER.folders, _BUILDER.allow_download, _BUILDER.cache_size,
                            _BUILDER.annotator_dirs) != settings:
        _BUILDER = UnitBuilder(*settings)
    return _BUILDER


_SCORER = None


def _scorer():
    """The quality scorer, sharing the unit builder's models."""
    global _SCORER
    from caphuman_ext.quality import Scorer

    if _SCORER is None or _SCORER.builder is not builder():
        _SCORER = Scorer(builder=builder())
    return _SCORER


def _score(payload: dict) -> dict:
    from caphuman_ext.quality.api import score_request

    return score_request(payload, _scorer())


def _model_files(verify: bool = False, model: str = "") -> list[dict]:
    return model_status(_folders(), annotator_dirs=_annotator_dirs(), verify=verify, model=model)


_PHOTO_STORE: PhotoStore | None = None


def _photo_store() -> PhotoStore:
    """Reference photos of generated images, keyed by the hash their infotext carries (for paste)."""
    global _PHOTO_STORE
    if _PHOTO_STORE is None:
        from modules import paths

        root = Path(getattr(paths, "data_path", None) or Path(paths.models_path).parent)
        _PHOTO_STORE = PhotoStore(root / "caphuman" / "photos")
    return _PHOTO_STORE


_PASTES: dict[tuple[str, int], PastedUnit | None] = {}


def _pasted(params: dict, index: int) -> PastedUnit | None:
    """One paste reads the photo store once per unit, not once per component."""
    key = (str(params.get(infotext_key(index))), index)
    if key not in _PASTES:
        if len(_PASTES) > 16:
            _PASTES.clear()
        _PASTES[key] = pasted_unit(params, index, _photo_store())
    return _PASTES[key]


def _infotext(unit) -> str:
    """A unit's infotext, its photos saved in the local store under the hashes written there."""
    store = _photo_store()
    pose = store.save([unit.pose_image]) if unit.pose_image is not None else None
    return to_infotext(unit, store.save(unit.reference_images), pose)


def _offload() -> bool:
    """Move CapHuman's models off the GPU after use: the setting, or the webui's --medvram / --lowvram."""
    return bool(_opt("caphuman_offload", False)) or host.low_vram()


def _after_use() -> None:
    if _offload():
        builder().offload()
        devices.torch_gc()


def _render(unit, width: int, height: int):
    """The unit's head hint on a width×height canvas."""
    return builder().hint(unit, width, height, devices.device)


external_code.register_renderer(_render)


def on_cfg_denoiser(params) -> None:
    job.on_step(params, host)


script_callbacks.on_cfg_denoiser(on_cfg_denoiser)


class Script(scripts.Script):
    def title(self):
        return SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr

        tab = "img2img" if is_img2img else "txt2img"
        components, self.infotext_fields = [], []
        with gr.Accordion("CapHuman", open=False, elem_id=f"caphuman_{tab}"):
            for index in range(int(_opt("caphuman_units", 2))):
                with gr.Tab(f"Person {index + 1}"):
                    components += self._unit_ui(tab, index)
            build_model_files_panel(_model_files, lambda name: download(name, _folders()),
                                    model=components[FIELD_ORDER.index("model")])  # the file Person 1 uses
        return components

    def _unit_ui(self, tab: str, index: int) -> list:
        import gradio as gr

        uid = f"{tab}_{index}"
        with gr.Row():
            enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"caphuman_enabled_{uid}")
            model = gr.Dropdown(label="CapHuman model", choices=[""] + list(list_capface_models(_folders())),
                                value="", elem_id=f"caphuman_model_{uid}")
            refresh = gr.Button("🔄", elem_classes=["tool"])
        with gr.Row():
            reference = gr.Image(label="Reference photo (the person)", type="pil", elem_id=f"caphuman_ref_{uid}")
            pose = gr.Image(label="Pose photo (optional: else the sliders)", type="pil",
                            elem_id=f"caphuman_pose_{uid}")
        more = gr.File(label="More photos of the same person (optional)", file_count="multiple",
                       file_types=["image"], type="binary", elem_id=f"caphuman_more_{uid}")
        with gr.Row():
            face_index = gr.Number(label="Face (0 = largest)", value=0, precision=0)
            whole = gr.Checkbox(label="No face found: use the whole photo", value=False)
            modes = gr.CheckboxGroup(label="Copy from the pose photo", choices=list(MODES),
                                     value=["position", "pose"])
        with gr.Row():
            strength = gr.Slider(label="Strength", minimum=0, maximum=2, step=0.05, value=1.0,
                                 elem_id=f"caphuman_strength_{uid}")
            start = gr.Slider(label="Start (fraction of steps)", minimum=0, maximum=1, step=0.01, value=0.0)
            end = gr.Slider(label="End (fraction of steps)", minimum=0, maximum=1, step=0.01, value=1.0)
            pose_only = gr.Slider(label="Pose-only steps (identity off for this first fraction of the steps)",
                                  minimum=0, maximum=1, step=0.01, value=0.0)
        with gr.Row():
            resize_mode = gr.Radio(label="Resize mode", choices=list(RESIZE_MODES), value="Crop and Resize")
            passes = gr.Radio(label="Act in (hires fix)", choices=list(PASSES), value="both",
                              elem_id=f"caphuman_passes_{uid}")
            detail_passes = gr.Radio(label="Detail passes of other extensions (ADetailer): head = identity + this "
                                     "head, identity = identity only, off", choices=list(DETAIL_PASSES),
                                     value="head", elem_id=f"caphuman_detail_passes_{uid}")
        with gr.Row():
            refine = gr.Checkbox(label="Face refine: after the image, repaint this head with this person",
                                 value=False, elem_id=f"caphuman_refine_{uid}")
            refine_denoise = gr.Slider(label="Refine denoise", minimum=0.05, maximum=1, step=0.01, value=0.4,
                                       elem_id=f"caphuman_refine_denoise_{uid}")
            refine_size = gr.Slider(label="Refine pass size", minimum=64, maximum=2048, step=8, value=512)
            refine_padding = gr.Slider(label="Refine padding (pixels)", minimum=0, maximum=512, step=1, value=32)
        with gr.Accordion("Head sliders (used without a pose photo)", open=False):
            with gr.Row():
                yaw = gr.Slider(label="Yaw", minimum=-90, maximum=90, step=1, value=0, elem_id=f"caphuman_yaw_{uid}")
                pitch = gr.Slider(label="Pitch", minimum=-60, maximum=60, step=1, value=0,
                                  elem_id=f"caphuman_pitch_{uid}")
                roll = gr.Slider(label="Roll", minimum=-60, maximum=60, step=1, value=0)
            with gr.Row():
                cx = gr.Slider(label="Head x", minimum=0, maximum=1, step=0.01, value=0.5)
                cy = gr.Slider(label="Head y", minimum=0, maximum=1, step=0.01, value=0.45)
                scale = gr.Slider(label="Head size", minimum=0.05, maximum=1.5, step=0.01, value=0.45)
            with gr.Row():
                expression = gr.Slider(label="Expression", minimum=0, maximum=2, step=0.05, value=1.0)
                jaw = gr.Slider(label="Jaw open", minimum=-0.2, maximum=0.6, step=0.01, value=0.0)
            with gr.Row():
                light_yaw = gr.Slider(label="Light direction (left/right)", minimum=-180, maximum=180, step=1, value=0)
                light_pitch = gr.Slider(label="Light direction (up/down)", minimum=-90, maximum=90, step=1, value=0)
                light_strength = gr.Slider(label="Light strength (0: the photo's)", minimum=0, maximum=3, step=0.05,
                                           value=0)
        with gr.Row():
            preview_button = gr.Button("Preview head", elem_id=f"caphuman_preview_button_{uid}")
            width = gr.Slider(label="Preview width", minimum=64, maximum=2048, step=8, value=512)
            height = gr.Slider(label="Preview height", minimum=64, maximum=2048, step=8, value=512)
        preview = gr.Gallery(label="normal · albedo · shading · head mask · landmarks", columns=5, height=220,
                             elem_id=f"caphuman_preview_{uid}", elem_classes=["caphuman-preview"])
        message = gr.Markdown("")
        values = [enabled, model, reference, face_index, whole, pose, modes, strength, start, end, pose_only,
                  resize_mode, yaw, pitch, roll, cx, cy, scale, expression, jaw, light_yaw, light_pitch,
                  light_strength, more, passes, detail_passes, refine, refine_denoise, refine_size, refine_padding]
        assert len(values) == len(FIELD_ORDER)
        refresh.click(lambda: gr.update(choices=[""] + list(list_capface_models(_folders()))), outputs=[model])
        preview_button.click(_preview_ui, inputs=[*values, width, height], outputs=[preview, message])
        self._paste_fields(index, dict(zip(FIELD_ORDER, values)), message)
        return values

    def _paste_fields(self, index: int, components: dict, message) -> None:
        """Paste: settings by unit position; photos (and `enabled`) only when the local photo store has them."""
        import gradio as gr

        def field(name: str):
            def value(params: dict):
                pasted = _pasted(params, index)
                if pasted is None:
                    return gr.update()
                if name in pasted.settings:
                    return gr.update(value=pasted.settings[name])
                found = {"enabled": pasted.enabled, "reference_images": pasted.reference,
                         "more_reference_images": pasted.more, "pose_image": pasted.pose}.get(name)
                return gr.update() if found is None else gr.update(value=found)
            return value

        for name, component in components.items():
            if name != "allow_whole_image":
                self.infotext_fields.append((component, field(name)))
        self.infotext_fields.append((message, lambda params: gr.update(value=(
            _pasted(params, index) or PastedUnit()).message or "")))

    def process(self, p, *args):
        if job.copy_of_a_running_job(p):  # ADetailer sets scripts up again on a copy of the job: not a job
            return
        device = devices.device
        job.start(p, args, host, prepare=lambda unit, position: builder().prepare(unit, device, position),
                  render=_render, offload=_offload(), describe=_infotext,
                  task=getattr(shared.state, "time_start", None))  # set by state.begin() for each UI/API task
        if job.generation_of(p) is not None:
            _after_use()

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
        if generation is None or not _opt("caphuman_score", False):
            return
        units = [unit for unit, acted in zip(generation.units, generation.acted(), strict=True) if acted]
        if not units:
            return
        try:
            result = _scorer().score(pp.image, [unit.params for unit in units], overlay=True)
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
            _after_use()


def _preview_ui(*values):
    *unit_values, width, height = values
    try:
        unit = unit_from_dict({**dict(zip(FIELD_ORDER, unit_values)), "enabled": True})
        images = _preview(unit, int(width), int(height))
    except Exception as error:  # noqa: BLE001
        return [], f"**CapHuman preview failed:** {error}"
    return [(image, name) for name, image in images.items()], ""


def _preview(unit, width: int, height: int) -> dict:
    result = builder().render(unit, width, height, devices.device)
    return builder().head_pipeline(devices.device).preview(result, unit.pose_image, unit.resize_mode)


def _on_ui_settings():
    import gradio as gr

    section = ("caphuman", "CapHuman")
    options = {
        "caphuman_units": shared.OptionInfo(2, "Number of CapHuman units (restart the UI)", gr.Slider,
                                            {"minimum": 1, "maximum": 4, "step": 1}, section=section),
        "caphuman_model_dir": shared.OptionInfo("", "Extra CapHuman model folder", section=section),
        "caphuman_auto_download": shared.OptionInfo(True, "Download free model files on first use",
                                                    section=section),
        "caphuman_offload": shared.OptionInfo(False, "Move CapHuman models to the CPU after each generation "
                                              "(always on with --medvram / --lowvram)", section=section),
        "caphuman_score": shared.OptionInfo(False, "Score CapHuman results: identity similarity and head-control "
                                            "errors in the infotext, and an overlay of the target head",
                                            section=section),
        "caphuman_cache_size": shared.OptionInfo(16, "Photos remembered by the identity and head caches", gr.Slider,
                                                 {"minimum": 1, "maximum": 128, "step": 1}, section=section),
    }
    for key, info in options.items():
        shared.opts.add_option(key, info)


script_callbacks.on_ui_settings(_on_ui_settings)


def _on_app_started(demo, app):
    install_api(app, folders=_folders, preview=_preview, version=VERSION, script_title=SCRIPT_TITLE,
                model_files=_model_files, score=_score)


script_callbacks.on_app_started(_on_app_started)


def _register_xyz_axes():
    xyz = next((s.module for s in scripts.scripts_data if s.script_class.__module__ == "xyz_grid.py"), None)
    if xyz is None:
        return

    def setter(name, cast=float):
        def apply(p, x, xs):
            overrides = getattr(p, "caphuman_overrides", {})
            overrides[name] = cast(x) if name != "modes" else tuple(m for m in str(x).split("+") if m)
            p.caphuman_overrides = overrides
        return apply

    for label, name, cast in (("Strength", "strength", float), ("Start", "start", float), ("End", "end", float),
                              ("Pose-only steps", "pose_only", float), ("Yaw", "yaw", float),
                              ("Pitch", "pitch", float), ("Roll", "roll", float), ("Modes", "modes", str)):
        xyz.axis_options.append(xyz.AxisOption(f"[CapHuman] {label}", cast, setter(name, cast)))
    xyz.axis_options.append(xyz.AxisOption("[CapHuman] Act in", str, setter("passes", check_passes),
                                           choices=lambda: list(PASSES)))
    xyz.axis_options.append(xyz.AxisOption("[CapHuman] Refine denoise", float, setter("refine_denoise", float)))


script_callbacks.on_before_ui(_register_xyz_axes)
