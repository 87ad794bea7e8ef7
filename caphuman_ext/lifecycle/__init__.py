"""One generation's CapHuman state and the pure decisions behind it (geometry, CFG rows, step windows).

Nothing here imports the webui: host adapters (`caphuman_ext.hosts`) translate the host's objects into these values.
"""

from .generation import CapHumanError, Generation
from .geometry import Frame, RenderPlan, crop_frame, full_frame, hires_frame, render_plan
from .rows import RowPlan, cfg_rows

__all__ = ["CapHumanError", "Frame", "Generation", "RenderPlan", "RowPlan", "cfg_rows", "crop_frame", "full_frame",
           "hires_frame", "render_plan"]
