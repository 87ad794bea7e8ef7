"""A small gradio (3.x API) panel for the model-files status: the table, refresh, verify, and one download button per
free file. No webui import: the caller passes how to read the status and how to download."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from preprocessors.identity import weights

from .model_files import status_markdown

StatusFn = Callable[[bool], list[dict[str, Any]]]  # verify -> rows (model_files.model_status bound to the folders)
DownloadFn = Callable[[str], Any]  # free file name -> path (model_files.download bound to the folders)


def download_and_report(name: str, status: StatusFn, download: DownloadFn) -> tuple[str, str]:
    """(message, refreshed table) after downloading `name`; errors become the message."""
    model = weights.FREE_FILES[name]
    try:
        path = download(name)
        message = f"{model.filename}: downloaded and verified → `{path}`"
    except Exception as error:  # noqa: BLE001 - shown to the user as is
        message = f"{model.filename}: {error}"
    return message, status_markdown(status(False))


def build_model_files_panel(status: StatusFn, download: DownloadFn, title: str = "CapHuman model files"):
    """Create the panel inside the current gradio Blocks context; returns its components by name."""
    import gradio as gr

    with gr.Accordion(title, open=False):
        table = gr.Markdown(status_markdown(status(False)))
        message = gr.Markdown("")
        with gr.Row():
            refresh = gr.Button("Refresh")
            verify = gr.Button("Verify hashes (reads each file once)")
        refresh.click(fn=lambda: status_markdown(status(False)), inputs=[], outputs=[table])
        verify.click(fn=lambda: status_markdown(status(True)), inputs=[], outputs=[table])
        buttons = {}
        with gr.Row():
            for name, model in weights.FREE_FILES.items():
                buttons[name] = gr.Button(f"Download {model.filename} ({model.size / 1e6:,.0f} MB)")
                buttons[name].click(fn=lambda name=name: download_and_report(name, status, download), inputs=[],
                                    outputs=[message, table])
    return {"table": table, "message": message, "refresh": refresh, "verify": verify, "downloads": buttons}
