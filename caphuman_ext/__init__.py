"""CapHuman for the webui (AUTOMATIC1111, Forge): CapFace, its checkpoint loading, the residual engine and the A1111
module hook."""

from .capface import CapFace
from .checkpoint import CheckpointError, load_capface, read_clip_vision_state_dict
from .config import CapFaceConfig, derive_config
from .control import CapFaceControl
from .engine import ResidualEngine
from .hook import IncompatibleUNetError, UNetHook, hook_unet
from .rows import RowPlan

__all__ = [
    "CapFace",
    "CapFaceConfig",
    "CapFaceControl",
    "CheckpointError",
    "IncompatibleUNetError",
    "ResidualEngine",
    "RowPlan",
    "UNetHook",
    "derive_config",
    "hook_unet",
    "load_capface",
    "read_clip_vision_state_dict",
]
