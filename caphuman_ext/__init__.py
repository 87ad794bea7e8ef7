"""CapHuman for the AUTOMATIC1111 webui: CapFace, its checkpoint loading and the UNet residual hook."""

from .capface import CapFace
from .checkpoint import CheckpointError, load_capface, read_clip_vision_state_dict
from .config import CapFaceConfig, derive_config
from .control import CapFaceControl
from .hook import IncompatibleUNetError, UNetHook, hook_unet

__all__ = [
    "CapFace",
    "CapFaceConfig",
    "CapFaceControl",
    "CheckpointError",
    "IncompatibleUNetError",
    "UNetHook",
    "derive_config",
    "hook_unet",
    "load_capface",
    "read_clip_vision_state_dict",
]
