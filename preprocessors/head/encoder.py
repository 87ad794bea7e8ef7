"""DECA's coarse encoder `E_flame`: ResNet-50 features -> MLP -> 236 FLAME/camera/light numbers."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from safe_files.rng_guard import rng_untouched

CODE_SIZES = {"shape": 100, "tex": 50, "exp": 50, "pose": 6, "cam": 3, "light": 27}


class DecaEncoder(nn.Module):
    """Same parameter names as `E_flame` in deca_model.tar (`encoder.*` torchvision ResNet-50 without fc,
    `layers.0/2` the MLP)."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        self.encoder = torchvision.models.resnet50(weights=None)
        del self.encoder.fc
        self.layers = nn.Sequential(nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, sum(CODE_SIZES.values())))

    @classmethod
    @rng_untouched()
    def from_file(cls, path: str | Path, device: torch.device | str = "cpu") -> DecaEncoder:
        """deca_model.tar read by `safe_files.weights` (no pickled code runs, sizes bounded by the file); only
        `E_flame` is used, and it must fit the network exactly."""
        from safe_files.weights import load_pickled_weights

        name = Path(path).name
        checkpoint = load_pickled_weights(path)
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("E_flame"), dict):
            raise ValueError(f"{name}: expected DECA's deca_model.tar with an 'E_flame' entry")
        model = cls()
        expected = model.state_dict()
        state = checkpoint["E_flame"]
        wrong = [k for k, v in expected.items()
                 if not isinstance(state.get(k), torch.Tensor) or tuple(state[k].shape) != tuple(v.shape)]
        if wrong or set(state) - set(expected):
            raise ValueError(f"{name}: 'E_flame' does not fit DECA's encoder (missing or mismatched: {wrong[:4]}, "
                             f"unexpected: {sorted(set(state) - set(expected))[:4]})")
        if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
            raise ValueError(f"{name}: 'E_flame' holds NaN or infinite weights")
        model.load_state_dict(state, strict=True)
        return model.to(device).eval().requires_grad_(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        net = self.encoder
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return F.avg_pool2d(x, 7, stride=1).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) crops in 0..1 -> (B, 236) raw codes."""
        return self.layers(self.features(images))

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw codes split as DECA does: light reshaped to (B, 9, 3); `raw` keeps the vector."""
        return split_codes(self(images))


def split_codes(raw: torch.Tensor) -> dict[str, torch.Tensor]:
    codes, start = {"raw": raw}, 0
    for name, size in CODE_SIZES.items():
        codes[name] = raw[:, start: start + size]
        start += size
    codes["light"] = codes["light"].reshape(raw.shape[0], 9, 3)
    return codes
