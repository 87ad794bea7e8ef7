"""Preprocessing latency: head fit + render (crop, E_flame, FLAME, texture, rasterize) and the identity encoder
(parsing, CLIP ViT-L/14, FaceNet), cold and with the caches warm. Random weights at the real sizes.

    python benchmarks/bench_preprocess.py [--device cuda] [--iters 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, device: str, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def flame_sized_assets(seed: int = 0):
    """A FLAME-sized head (≈5k vertices, ≈10k faces, 5 joints, 400 shape / 36 pose bases) and a 50-component
    512² texture space, in memory."""
    from preprocessors.head.mesh import HeadTemplate

    rs = np.random.RandomState(seed)
    n_lat, n_lon = 58, 86
    lat = np.linspace(0.08 * np.pi, 0.92 * np.pi, n_lat)
    lon = np.linspace(0, 2 * np.pi, n_lon + 1)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    v = np.stack([0.075 * np.sin(la) * np.cos(lo), 0.10 * np.cos(la), 0.09 * np.sin(la) * np.sin(lo)], -1)
    v = v.reshape(-1, 3)
    uv = np.stack([lo / (2 * np.pi), 1 - la / np.pi], -1).reshape(-1, 2)
    faces = []
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, b = i * (n_lon + 1) + j, i * (n_lon + 1) + j + 1
            c, d = a + n_lon + 1, b + n_lon + 1
            faces += [[a, c, b], [b, c, d]]
    faces = np.array(faces)
    count = v.shape[0]
    model = {"v_template": v, "shapedirs": rs.randn(count, 3, 400) * 1e-3, "posedirs": rs.randn(count, 3, 36) * 1e-3,
             "J_regressor": np.full((5, count), 1.0 / count), "weights": np.full((count, 5), 0.2),
             "kintree_table": np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]), "f": faces}
    front = np.arange(0, len(faces), 2)
    landmarks = {"static_lmk_faces_idx": rs.choice(front, 51), "static_lmk_bary_coords": np.full((51, 3), 1 / 3),
                 "dynamic_lmk_faces_idx": torch.from_numpy(rs.choice(front, (79, 17))),
                 "dynamic_lmk_bary_coords": torch.full((79, 17, 3), 1 / 3),
                 "full_lmk_faces_idx": rs.choice(front, (1, 68)), "full_lmk_bary_coords": np.full((1, 68, 3), 1 / 3)}
    template = HeadTemplate(torch.from_numpy(faces).long(), torch.from_numpy(uv).float(),
                            torch.from_numpy(faces).long())
    mean = rs.rand(1, 512 * 512 * 3).astype(np.float32) * 255
    basis = rs.randn(512 * 512 * 3, 50).astype(np.float32)
    return model, landmarks, template, mean, basis


def bench_head(device: str, iters: int) -> dict:
    from preprocessors.head.codes import mix_codes
    from preprocessors.head.crop import crop_face
    from preprocessors.head.decode import decode
    from preprocessors.head.encoder import DecaEncoder
    from preprocessors.head.flame import Flame
    from preprocessors.head.projection import inverse_tform
    from preprocessors.head.renderer import HeadRenderer
    from preprocessors.head.texture import FlameTexture

    model, landmarks, template, mean, basis = flame_sized_assets()
    flame = Flame(model, landmarks).to(device)
    texture = FlameTexture(mean, basis).to(device)
    renderer = HeadRenderer(template).to(device)
    encoder = DecaEncoder().to(device).eval()
    photo = (np.random.RandomState(1).rand(512, 512, 3) * 255).astype(np.uint8)
    region = (180.0, np.array([256.0, 260.0]))
    result = {"vertices": int(flame.v_template.shape[0]), "faces": int(flame.faces.shape[0])}
    crop = crop_face(photo, region)
    result["crop_ms_cpu"] = timed(lambda: crop_face(photo, region), "cpu", iters)
    images = crop.image[None].to(device)

    def encode():
        with torch.no_grad():
            codes = encoder.encode(images)
        codes["tform"] = inverse_tform(crop.tform).to(device)
        return codes

    result["encode_ms"] = timed(encode, device, iters)
    codes = encode()
    # random encoder weights give meaningless codes; use plausible ones (as DECA's outputs are) for the mesh
    g = torch.Generator().manual_seed(0)
    plausible = {"shape": 0.5 * torch.randn(1, 100, generator=g), "exp": 0.3 * torch.randn(1, 50, generator=g),
                 "pose": torch.tensor([[0.12, 0.25, 0.05, 0.08, 0.0, 0.0]]), "cam": torch.tensor([[8.5, 0.01, 0.02]]),
                 "tex": 0.3 * torch.randn(1, 50, generator=g),
                 "light": torch.cat([torch.full((1, 1, 3), 3.0), 0.3 * torch.randn(1, 8, 3, generator=g)], 1)}
    codes.update({k: v.to(device) for k, v in plausible.items()})
    code = mix_codes(codes, codes, "position,pose")
    with torch.no_grad():
        base = decode(code, flame, texture, renderer, 512, 512)  # the photo's frame
    result["flame_texture_project_ms"] = timed(lambda: decode(code, flame, texture, renderer, 64, 64), device,
                                               iters)
    for size in (512, 1024):
        def render(size=size):
            with torch.no_grad():
                return renderer(base.vertices, base.projected, texture(code["tex"]), code["light"], size, size)

        maps = render()
        result[f"coverage_{size}"] = float(maps.alpha.mean())
        result[f"render_ms_{size}"] = timed(render, device, iters)
        result[f"total_cold_ms_{size}"] = (result["crop_ms_cpu"] + result["encode_ms"]
                                           + result["flame_texture_project_ms"] + result[f"render_ms_{size}"])
        result[f"warm_rerender_ms_{size}"] = result["flame_texture_project_ms"] + result[f"render_ms_{size}"]
    return result


def bench_identity(device: str, iters: int) -> dict:
    from PIL import Image

    result = {}
    dtype = torch.float16 if device == "cuda" else torch.float32
    try:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        from preprocessors.identity.clip_vision import clip_pixel_values, clip_tokens

        config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=224, patch_size=14, hidden_act="quick_gelu")
        clip = CLIPVisionModel(config).to(device, dtype).eval()
        image = Image.fromarray((np.random.RandomState(2).rand(512, 512, 3) * 255).astype(np.uint8))
        result["clip_preprocess_ms_cpu"] = timed(lambda: clip_pixel_values(image), "cpu", iters)
        pixels = clip_pixel_values(image)
        result["clip_vitl14_ms"] = timed(lambda: clip_tokens(clip, pixels), device, iters)
        result["clip_resident_gb"] = sum(p.numel() * p.element_size() for p in clip.parameters()) / 2**30
        clip = None  # free it before the next models
    except Exception as error:  # noqa: BLE001 - report what could not run
        result["clip_error"] = f"{type(error).__name__}: {error}"
    try:
        from facexlib.parsing.bisenet import BiSeNet

        from preprocessors.identity.face_parsing import parse_face

        parser = BiSeNet(num_class=19).to(device).eval()
        image = Image.fromarray((np.random.RandomState(3).rand(512, 512, 3) * 255).astype(np.uint8))
        result["parse_512_ms"] = timed(lambda: parse_face(parser, image), device, iters)
    except Exception as error:  # noqa: BLE001
        result["parse_error"] = f"{type(error).__name__}: {error}"
    try:
        from facenet_pytorch import MTCNN, InceptionResnetV1

        from preprocessors.identity.facenet import face_embedding

        facenet = InceptionResnetV1(pretrained=None, classify=False).to(device).eval()
        crop = torch.rand(3, 160, 160)
        result["facenet_ms"] = timed(lambda: face_embedding(facenet, crop), device, iters)
        mtcnn = MTCNN(image_size=160, device=device)
        image = Image.fromarray((np.random.RandomState(4).rand(512, 512, 3) * 255).astype(np.uint8))
        result["mtcnn_detect_512_ms"] = timed(lambda: mtcnn.detect(image), device, iters)
    except Exception as error:  # noqa: BLE001
        result["facenet_error"] = f"{type(error).__name__}: {error}"
    from preprocessors.photo_key import photo_key

    image = Image.fromarray((np.random.RandomState(5).rand(512, 512, 3) * 255).astype(np.uint8))
    result["warm_cache_key_ms_cpu"] = timed(lambda: photo_key(image, 0, False), "cpu", iters)
    return result


def bench_graphed(device: str, iters: int) -> dict:
    """The launch-bound networks eager vs replayed as CUDA graphs (`preprocessors.graphed_module.GraphedModule`),
    through the preprocessors' own call sites; max |difference| of the outputs (graphs replay the same kernels)."""
    from PIL import Image

    from preprocessors.graphed_module import GraphedModule

    result = {}
    rs = np.random.RandomState(7)

    def compare(name, model, call):
        graphed = GraphedModule(model)
        eager_out, graphed_out = call(model), call(graphed)
        graphed_out = call(graphed)  # a replay (the first call captured)
        result[f"{name}_eager_ms"] = timed(lambda: call(model), device, iters)
        result[f"{name}_graphed_ms"] = timed(lambda: call(graphed), device, iters)
        a = torch.as_tensor(np.asarray(eager_out)) if not isinstance(eager_out, torch.Tensor) else eager_out
        b = torch.as_tensor(np.asarray(graphed_out)) if not isinstance(graphed_out, torch.Tensor) else graphed_out
        result[f"{name}_max_abs_diff"] = float((a.double() - b.double()).abs().max())
        result[f"{name}_disabled"] = graphed.disabled_reason

    try:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        from preprocessors.identity.clip_vision import clip_tokens

        config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=224, patch_size=14, hidden_act="quick_gelu")
        clip = CLIPVisionModel(config).to(device, torch.float16).eval()
        pixels = torch.from_numpy(rs.randn(1, 3, 224, 224).astype(np.float32))
        compare("clip", clip, lambda m: clip_tokens(m, pixels))
        clip = None
    except Exception as error:  # noqa: BLE001
        result["clip_error"] = f"{type(error).__name__}: {error}"
    try:
        from facexlib.parsing.bisenet import BiSeNet

        from preprocessors.identity.face_parsing import parse_face

        parser = BiSeNet(num_class=19).to(device).eval()
        image = Image.fromarray((rs.rand(512, 512, 3) * 255).astype(np.uint8))
        compare("parse", parser, lambda m: parse_face(m, image))
    except Exception as error:  # noqa: BLE001
        result["parse_error"] = f"{type(error).__name__}: {error}"
    try:
        from facenet_pytorch import InceptionResnetV1

        from preprocessors.identity.facenet import face_embedding

        facenet = InceptionResnetV1(pretrained=None, classify=False).to(device).eval()
        crop = torch.rand(3, 160, 160)
        compare("facenet", facenet, lambda m: face_embedding(m, crop))
    except Exception as error:  # noqa: BLE001
        result["facenet_error"] = f"{type(error).__name__}: {error}"
    try:
        from preprocessors.head.encoder import DecaEncoder, split_codes

        encoder = DecaEncoder().to(device).eval()
        images = torch.rand(1, 3, 224, 224, device=device)

        def encode(m):
            with torch.no_grad():
                return split_codes(m(images))["raw"]

        compare("deca_encoder", encoder, encode)
    except Exception as error:  # noqa: BLE001
        result["deca_error"] = f"{type(error).__name__}: {error}"
    return result


def bench_first_image(device: str, photos: int = 6, profile: str | None = None) -> dict:
    """One identity + its hint at 512² through the preprocessors' own classes (`IdentityEncoder.encode`, then
    `HeadPipeline.render`, as `UnitBuilder` calls them), real-size random networks, MTCNN with its shipped weights.
    `first_call`: the first photo after loading (captures included); `cold`: each later new photo (same size, the
    caches cold for it), median; `warm`: the same photo again (both caches hit). Eager (as shipped) and graphed
    (CLIP, BiSeNet, FaceNet and DECA's encoder wrapped by `graphed_on_cuda`, as the preprocessors did on 2026-12-03). The photos differ in one pixel: the same detections, new cache keys."""
    from facenet_pytorch import InceptionResnetV1
    from facexlib.parsing.bisenet import BiSeNet
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModel

    import preprocessors.head.pipeline as head_pipeline
    import preprocessors.identity.encoder as identity_encoder
    from preprocessors.graphed_module import graphed_on_cuda
    from preprocessors.head.encoder import DecaEncoder
    from preprocessors.head.flame import Flame
    from preprocessors.head.renderer import HeadRenderer
    from preprocessors.head.texture import FlameTexture
    from preprocessors.identity import facenet as facenet_stage
    from preprocessors.identity.facenet import load_face_detector

    base = (np.random.RandomState(11).rand(512, 512, 3) * 255).astype(np.uint8)

    def photo(index):
        array = base.copy()
        array[0, 0] = [index % 256, index // 256, 7]
        return Image.fromarray(array)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    result = {}
    model, landmarks, template, mean, basis = flame_sized_assets()
    for mode in ("graphed", "eager"):
        def wrap(module, mode=mode, **options):
            return graphed_on_cuda(module, device, **options) if mode == "graphed" else module

        torch.manual_seed(0)
        encoder = identity_encoder.IdentityEncoder(device=device, dtype=torch.float16 if device == "cuda"
                                                   else torch.float32)
        config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=224, patch_size=14,
                                  hidden_act="quick_gelu")
        encoder._clip = wrap(CLIPVisionModel(config).eval().requires_grad_(False))
        encoder._parser = wrap(BiSeNet(num_class=19).eval().requires_grad_(False), capture_after=2,
                               max_input_numel=3 * 1024 * 1024)
        encoder._facenet = wrap(InceptionResnetV1(pretrained=None, classify=False).eval().requires_grad_(False))
        encoder._detector = load_face_detector(device)
        pipeline = head_pipeline.HeadPipeline(assets=None, device=device)
        deca = DecaEncoder().eval().requires_grad_(False)
        with torch.no_grad():  # random weights give a meaningless head: the last layer answers plausible codes
            g = torch.Generator().manual_seed(0)
            deca.layers[2].weight.zero_()
            deca.layers[2].bias.copy_(torch.cat([
                0.5 * torch.randn(100, generator=g), 0.3 * torch.randn(50, generator=g),
                0.3 * torch.randn(50, generator=g), torch.tensor([0.12, 0.25, 0.05, 0.08, 0.0, 0.0]),
                torch.tensor([8.5, 0.01, 0.02]), torch.full((3,), 3.0), 0.3 * torch.randn(24, generator=g)]))
        pipeline._models = (wrap(deca), Flame(model, landmarks),
                            FlameTexture(mean, basis), HeadRenderer(template))
        facenet_stage._FACES.clear()
        samples = []
        for index in range(photos):
            image = photo(index + (0 if mode == "graphed" else 1000))
            sync()
            start = time.perf_counter()
            encoder.encode(image, allow_whole_image=True)
            pipeline.render(image, None, width=512, height=512, allow_whole_image=True)
            sync()
            samples.append((time.perf_counter() - start) * 1e3)
        sync()
        start = time.perf_counter()
        for _ in range(10):
            encoder.encode(image, allow_whole_image=True)
            pipeline.render(image, None, width=512, height=512, allow_whole_image=True)
        sync()
        result[f"{mode}_first_call_ms"] = samples[0]
        result[f"{mode}_cold_ms"] = statistics.median(samples[2:])
        result[f"{mode}_cold_samples_ms"] = samples
        result[f"{mode}_warm_ms"] = (time.perf_counter() - start) * 1e3 / 10
        result[f"{mode}_faces_found"] = len(facenet_stage._FACES.get(
            __import__("preprocessors.photo_key", fromlist=["photo_key"]).photo_key(image)) or ())
        # MTCNN alone on a new photo (the stage graphs do not touch)
        det = encoder._detector
        mtcnn = []
        for index in range(5):
            image = photo(index + 2000)
            sync()
            start = time.perf_counter()
            facenet_stage.detect_faces(det, image)
            sync()
            mtcnn.append((time.perf_counter() - start) * 1e3)
        result[f"{mode}_mtcnn_ms"] = statistics.median(mtcnn)
        if profile and mode == "graphed":  # where a new photo's time goes (host side; CUDA syncs show as waits)
            import cProfile
            import io
            import pstats

            profiler = cProfile.Profile()
            for index in range(3):
                image = photo(index + 3000)
                profiler.enable()
                encoder.encode(image, allow_whole_image=True)
                pipeline.render(image, None, width=512, height=512, allow_whole_image=True)
                sync()
                profiler.disable()
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text)
            stats.sort_stats("cumulative").print_stats(45)
            stats.sort_stats("tottime").print_stats(25)
            Path(profile).write_text(text.getvalue())
        encoder = pipeline = None
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json")
    parser.add_argument("--profile", help="write a cProfile of three new photos (graphed) to this file")
    parser.add_argument("--first-image-only", action="store_true",
                        help="only the end-to-end first image (identity + hint through the preprocessors)")
    args = parser.parse_args()
    info = {"device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()}",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    out = {"info": info, "first_image": bench_first_image(args.device, profile=args.profile)}
    if not args.first_image_only:
        out["head"] = bench_head(args.device, args.iters)
        out["identity"] = bench_identity(args.device, args.iters)
        if args.device == "cuda":
            out["graphed"] = bench_graphed(args.device, args.iters)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
