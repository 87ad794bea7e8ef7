"""Where CapFace's building blocks come from: the host's `ldm` package, else Forge Neo / Forge 2's `backend.nn.unet`.

CapFace is built from the host's own blocks so that the webui's attention optimisations and hijacks apply to it.
Forge Neo and Forge 2 ship no `ldm` package; their `backend.nn.unet` has ldm's blocks under ldm's names, constructor
signatures and parameter names.
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

from torch import nn


def ldm_blocks() -> tuple[ModuleType, ModuleType, object]:
    """(openaimodel, attention, util) of the host, looked up lazily (the webui patches some of their attributes)."""
    try:
        from ldm.modules import attention
        from ldm.modules.diffusionmodules import openaimodel, util
    except ImportError:
        return backend_blocks()
    return openaimodel, attention, util


def backend_blocks() -> tuple[ModuleType, ModuleType, object]:
    """The same three from Forge Neo / Forge 2's `backend.nn.unet` (raises ImportError elsewhere)."""
    from backend.nn import unet

    return unet, unet, SimpleNamespace(conv_nd=unet.conv_nd, linear=nn.Linear)
