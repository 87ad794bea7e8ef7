"""The host-neutral lifecycle: one generation's CapHuman state (`generation`), the job's callbacks (`job`), the
interface a host implements (`host`) and the pure decisions behind them (geometry, step windows).

Nothing here imports the webui or `caphuman_ext.hosts`: host adapters implement `host.Host` for their webui.
"""

from ..rows import RowPlan, cfg_rows
from .generation import CapHumanError, Generation
from .geometry import Frame, RenderPlan, crop_frame, full_frame, hires_frame, render_plan

__all__ = ["CapHumanError", "Frame", "Generation", "RenderPlan", "RowPlan", "cfg_rows", "crop_frame", "full_frame",
           "hires_frame", "render_plan"]
