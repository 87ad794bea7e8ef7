"""VRAM of a CapHuman unit on a CUDA GPU: resident weights with and without offload, and the extra peak of sampling.

    python benchmarks/bench_vram.py [--size 512]

Real-size models with random weights, fp16: CapFace (SD1.5 size), CLIP ViT-L/14 vision, FaceNet, BiSeNet, DECA's
E_flame, FLAME and its texture space; the SD1.5 UNet as in the webui (benchmarks/webui_like.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import caphuman_ext  # noqa: E402
from benchmarks.webui_like import patch_ldm_like_webui, sd15_capface, sd15_unet  # noqa: E402
from caphuman_ext.rows import RowPlan  # noqa: E402

GB = 2**30


def allocated() -> float:
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() / GB


def preprocessing_models(device: str, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    from facenet_pytorch import InceptionResnetV1
    from facexlib.parsing.bisenet import BiSeNet
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from benchmarks.bench_preprocess import flame_sized_assets
    from preprocessors.head.encoder import DecaEncoder
    from preprocessors.head.flame import Flame
    from preprocessors.head.texture import FlameTexture

    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                            num_attention_heads=16, image_size=224, patch_size=14))
    model, landmarks, _, mean, basis = flame_sized_assets()
    return {"clip_vision": clip.to(device, dtype), "facenet": InceptionResnetV1().to(device, dtype),
            "bisenet": BiSeNet(num_class=19).to(device, dtype), "deca_encoder": DecaEncoder().to(device, dtype),
            "flame": Flame(model, landmarks).to(device), "flame_texture": FlameTexture(mean, basis).to(device)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json")
    args = parser.parse_args()
    dtype = torch.float16
    patch_ldm_like_webui()
    unet = sd15_unet("cuda", dtype)
    base = allocated()
    capface = sd15_capface("cuda", dtype)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "capface_gb": allocated() - base}
    before = allocated()
    models = preprocessing_models("cuda", dtype)
    for name, module in models.items():
        result[f"{name}_gb"] = sum(t.numel() * t.element_size() for t in
                                   list(module.parameters()) + list(module.buffers())) / GB
    result["resident_without_offload_gb"] = result["capface_gb"] + allocated() - before
    for module in models.values():
        module.to("cpu")
    torch.cuda.empty_cache()
    result["resident_with_offload_gb"] = allocated() - base

    latent = args.size // 8
    hint = torch.rand(1, 9, args.size, args.size, device="cuda", dtype=dtype)
    context = capface.identity_context(torch.randn(1, 257, 1024, device="cuda", dtype=dtype),
                                       torch.randn(1, 1, 512, device="cuda", dtype=dtype))
    x = torch.randn(2, 4, latent, latent, device="cuda", dtype=dtype)
    t = torch.full((2,), 500.0, device="cuda", dtype=dtype)
    text = torch.randn(2, 77, 768, device="cuda", dtype=dtype)
    peaks = {}
    for name in ("bare", "unit"):
        control = caphuman_ext.CapFaceControl(capface, hint=hint, context=context)
        control.active = name == "unit"
        torch.cuda.synchronize()
        start = allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype), \
                caphuman_ext.hook_unet(unet, [control], rows=RowPlan.fixed([0, 0])):
            for _ in range(4):  # the first call captures the CUDA graph
                unet(x, t, context=text)
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() / GB - start
    result["sampling_extra_peak_gb"] = peaks["unit"] - peaks["bare"]
    result["sampling_peak_bare_gb"] = peaks["bare"]
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
