"""The CapHuman accordion of txt2img / img2img (gradio 3 and 4): one tab per unit, the model files panel, the paste
of an image's parameters back into the units, and the head preview."""

from __future__ import annotations

from preprocessors.head.codes import MODES
from preprocessors.head.frames import RESIZE_MODES

from ..model_files import download
from ..model_files_panel import build_model_files_panel
from ..services import Services
from ..unit.models import list_capface_models
from ..unit.params import DETAIL_PASSES, FIELD_ORDER, PASSES, unit_from_dict
from ..unit.paste import PastedUnit


def build(is_img2img: bool, units: int, services: Services, infotext_fields: list) -> list:
    """The accordion's components in `FIELD_ORDER`, unit after unit; paste handlers appended to `infotext_fields`."""
    import gradio as gr

    tab = "img2img" if is_img2img else "txt2img"
    components = []
    with gr.Accordion("CapHuman", open=False, elem_id=f"caphuman_{tab}"):
        for index in range(units):
            with gr.Tab(f"Person {index + 1}"):
                components += unit_tab(tab, index, services, infotext_fields)
        build_model_files_panel(services.model_files, lambda name: download(name, list(services.refresh().folders)),
                                model=components[FIELD_ORDER.index("model")])  # the file Person 1 uses
    return components


def _models(services: Services) -> list[str]:
    return [""] + list(list_capface_models(list(services.refresh().folders)))


def unit_tab(tab: str, index: int, services: Services, infotext_fields: list) -> list:
    """One unit's components, in `FIELD_ORDER`."""
    import gradio as gr

    uid = f"{tab}_{index}"
    with gr.Row():
        enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"caphuman_enabled_{uid}")
        model = gr.Dropdown(label="CapHuman model", choices=_models(services), value="",
                            elem_id=f"caphuman_model_{uid}")
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
    refresh.click(lambda: gr.update(choices=_models(services)), outputs=[model])
    preview_button.click(lambda *inputs: preview_gallery(services, *inputs), inputs=[*values, width, height],
                         outputs=[preview, message])
    infotext_fields += paste_fields(index, dict(zip(FIELD_ORDER, values, strict=True)), message, services)
    return values


def paste_fields(index: int, components: dict, message, services: Services) -> list:
    """Paste: settings by unit position; photos (and `enabled`) only when the local photo store has them."""
    import gradio as gr

    def field(name: str):
        def value(params: dict):
            pasted = services.pasted(params, index)
            if pasted is None:
                return gr.update()
            if name in pasted.settings:
                return gr.update(value=pasted.settings[name])
            found = {"enabled": pasted.enabled, "reference_images": pasted.reference,
                     "more_reference_images": pasted.more, "pose_image": pasted.pose}.get(name)
            return gr.update() if found is None else gr.update(value=found)
        return value

    fields = [(component, field(name)) for name, component in components.items() if name != "allow_whole_image"]
    fields.append((message, lambda params: gr.update(value=(services.pasted(params, index) or PastedUnit()).message
                                                     or "")))
    return fields


def preview_gallery(services: Services, *values) -> tuple[list, str]:
    """The preview button: (gallery images with captions, message)."""
    *unit_values, width, height = values
    try:
        unit = unit_from_dict({**dict(zip(FIELD_ORDER, unit_values, strict=True)), "enabled": True})
        images = services.preview(unit, int(width), int(height))
    except Exception as error:  # noqa: BLE001
        return [], f"**CapHuman preview failed:** {error}"
    return [(image, name) for name, image in images.items()], ""
