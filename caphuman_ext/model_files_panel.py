"""A small gradio (3.x API) panel for the model-files status: the table, refresh, verify, and a download button for
each free file that is missing or not the published one. No webui import: the caller passes how to read the status
and how to download. Nothing here raises into the UI: a status that cannot be read becomes the panel's message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from preprocessors.identity import weights

from .model_files import needs_download, status_markdown

StatusFn = Callable[[bool, str], list[dict[str, Any]]]  # (verify, unit's model name) -> model_files.model_status rows
DownloadFn = Callable[[str], Any]  # free file name -> path (model_files.download bound to the folders)


def download_label(name: str, row: dict[str, Any] | None = None) -> str:
    model = weights.FREE_FILES[name]
    size = f"{model.size / 1e6:,.0f} MB"
    if row is not None and row.get("status") in ("differs", "unreadable"):
        return f"Replace {model.filename} with the published file ({size})"
    return f"Download {model.filename} ({size})"


def panel_view(status: StatusFn, verify: bool = False, model: str = "") -> tuple[str, dict[str, str], str]:
    """(table, {free file name: button label} for the files to offer, message); never raises."""
    try:
        rows = status(verify, model or "")
    except Exception as error:  # noqa: BLE001 - the panel must build whatever the disk holds
        return "", {}, f"**The model files' status could not be read:** {type(error).__name__}: {error}"
    offered = {row["name"]: download_label(row["name"], row) for row in rows
               if row.get("name") in weights.FREE_FILES and needs_download(row)}
    return status_markdown(rows), offered, ""


def download_and_report(name: str, status: StatusFn, download: DownloadFn, model: str = "") -> tuple[str, str]:
    """(message, refreshed table) after downloading `name`; errors become the message."""
    file = weights.FREE_FILES[name]
    try:
        path = download(name)
        message = f"{file.filename}: downloaded and verified → `{path}`"
    except Exception as error:  # noqa: BLE001 - shown to the user as is
        message = f"{file.filename}: {error}"
    table, _, problem = panel_view(status, False, model)
    return problem or message, table


def build_model_files_panel(status: StatusFn, download: DownloadFn, title: str = "CapHuman model files",
                            model=None):
    """Create the panel inside the current gradio Blocks context; returns its components by name. `model`: the
    unit's model dropdown, whose file the panel describes (refreshed when it changes)."""
    import gradio as gr

    table_text, offered, problem = panel_view(status)
    inputs = [model] if model is not None else []
    with gr.Accordion(title, open=False):
        table = gr.Markdown(table_text)
        message = gr.Markdown(problem)
        with gr.Row():
            refresh = gr.Button("Refresh")
            verify = gr.Button("Verify hashes (reads each file once)")
        with gr.Row():
            buttons = {name: gr.Button(offered.get(name, download_label(name)), visible=name in offered)
                       for name in weights.FREE_FILES}
        outputs = [table, message, *buttons.values()]

        def view(verify_now: bool, name: str = "", report: str | None = None) -> list:
            text, offer, trouble = panel_view(status, verify_now, name)
            return [text, report if report is not None else trouble,
                    *(gr.update(visible=n in offer, value=offer.get(n, download_label(n))) for n in buttons)]

        refresh.click(fn=lambda *m: view(False, *m), inputs=inputs, outputs=outputs)
        verify.click(fn=lambda *m: view(True, *m), inputs=inputs, outputs=outputs)
        if model is not None:
            model.change(fn=lambda m: view(False, m), inputs=inputs, outputs=outputs)
        for name, button in buttons.items():
            def pressed(*m, name=name):
                report, _ = download_and_report(name, status, download, *m)
                return view(False, *m, report=report)
            button.click(fn=pressed, inputs=inputs, outputs=outputs)
    return {"table": table, "message": message, "refresh": refresh, "verify": verify, "downloads": buttons}
