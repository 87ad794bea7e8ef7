"""FLAME texture space (FLAME_texture.npz): mean + basis × tex code -> UV albedo map, as DECA's FLAMETex."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from safe_files.head_limits import HeadFileError

N_TEX = 50
TEXTURE_SIZE = 512
TEXTURE_VALUES = TEXTURE_SIZE * TEXTURE_SIZE * 3
MAX_COMPONENTS = 200  # the reference reshapes the basis to exactly 200 components
_CHUNK_BYTES = 16 << 20


def _member_header(archive: zipfile.ZipFile, key: str, name: str) -> tuple[zipfile.ZipInfo, tuple, bool, np.dtype]:
    from numpy.lib import format as npy_format

    try:
        info = archive.getinfo(f"{key}.npy")
    except KeyError:
        raise HeadFileError(f"{name}: no '{key}' array (expected FLAME's texture space)") from None
    with archive.open(info) as member:
        try:
            version = npy_format.read_magic(member)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, fortran, dtype = read_header(member)
        except ValueError as error:
            raise HeadFileError(f"{name}: '{key}' is not a .npy array ({error})") from None
        header_bytes = member.tell()
    if fortran and sum(n > 1 for n in shape) > 2:
        raise HeadFileError(f"{name}: '{key}' is a Fortran-ordered {len(shape)}-d array; expected C order")
    if dtype.kind != "f" or dtype.itemsize > 8:
        raise HeadFileError(f"{name}: '{key}' has dtype {dtype}, expected float")
    if info.file_size != header_bytes + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise HeadFileError(f"{name}: '{key}' declares {info.file_size} bytes, not what its shape {shape} needs")
    return info, shape, fortran, dtype


def _read_columns(archive: zipfile.ZipFile, info: zipfile.ZipInfo, rows: int, columns: int, keep: int,
                  fortran: bool, dtype: np.dtype, name: str) -> np.ndarray:
    """The first `keep` columns of a (rows, columns) array, streamed from the member in bounded chunks."""
    out = np.empty((rows, keep), dtype=np.float32)
    with archive.open(info) as member:
        member.seek(info.file_size - rows * columns * dtype.itemsize)
        if fortran:  # column-major: the first `keep` columns are the first `keep` x rows values
            for column in range(keep):
                out[:, column] = _read_exact(member, rows, dtype, name)
            return out
        step = max(1, _CHUNK_BYTES // (columns * dtype.itemsize))
        for start in range(0, rows, step):
            count = min(step, rows - start)
            out[start:start + count] = _read_exact(member, count * columns, dtype, name).reshape(count, columns)[:, :keep]
    return out


def _read_exact(member, count: int, dtype: np.dtype, name: str) -> np.ndarray:
    data = member.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise HeadFileError(f"{name}: truncated texture data")
    values = np.frombuffer(data, dtype=dtype)
    if not np.isfinite(values).all():
        raise HeadFileError(f"{name}: the texture space holds NaN or infinite values")
    return values


def read_texture_space(path: Path, n_tex: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (1, 512*512*3), basis (512*512*3, n_tex)) float32 from FLAME_texture.npz, checked while read."""
    name = path.name
    try:
        with zipfile.ZipFile(path) as archive:
            mean_info, mean_shape, mean_fortran, mean_dtype = _member_header(archive, "mean", name)
            if int(np.prod(mean_shape, dtype=np.int64)) != TEXTURE_VALUES:
                raise HeadFileError(f"{name}: 'mean' has shape {mean_shape}, expected 512x512x3 values")
            info, shape, fortran, dtype = _member_header(archive, "tex_dir", name)
            components = shape[-1] if shape else 0
            if not n_tex <= components <= MAX_COMPONENTS or int(np.prod(shape[:-1], dtype=np.int64)) != TEXTURE_VALUES:
                raise HeadFileError(f"{name}: 'tex_dir' has shape {shape}, expected 512x512x3 values x "
                                    f"{n_tex}..{MAX_COMPONENTS} components")
            mean = _read_columns(archive, mean_info, 1, TEXTURE_VALUES, TEXTURE_VALUES, False, mean_dtype, name)
            basis = _read_columns(archive, info, TEXTURE_VALUES, components, n_tex, fortran, dtype, name)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as error:
        raise HeadFileError(f"{name}: cannot read it as FLAME's texture space ({error})") from None
    return mean, basis


class FlameTexture(nn.Module):
    """Albedo UV map (B, 3, uv_size, uv_size) in 0..1, RGB (the npz is BGR), nearest-resized as DECA does."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray, n_tex: int = N_TEX, uv_size: int = 256) -> None:
        super().__init__()
        self.uv_size = uv_size
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, dtype=np.float32).reshape(1, -1) / 255.0))
        basis = np.asarray(basis, dtype=np.float32).reshape(-1, basis.shape[-1])[:, :n_tex] / 255.0
        self.register_buffer("basis", torch.from_numpy(np.ascontiguousarray(basis)))

    @classmethod
    def from_file(cls, path: str | Path, n_tex: int = N_TEX, uv_size: int = 256) -> FlameTexture:
        """FLAME_texture.npz read member by member within the sizes the texture space can have (a deflate bomb or
        a hostile header is refused before it is decompressed); only the first `n_tex` components are kept."""
        mean, basis = read_texture_space(Path(path), n_tex)
        return cls(mean, basis, n_tex, uv_size)

    def forward(self, tex: torch.Tensor) -> torch.Tensor:
        texture = self.mean + tex @ self.basis.T
        texture = texture.reshape(tex.shape[0], TEXTURE_SIZE, TEXTURE_SIZE, 3).permute(0, 3, 1, 2)
        texture = F.interpolate(texture, [self.uv_size, self.uv_size])
        return texture[:, [2, 1, 0]]
