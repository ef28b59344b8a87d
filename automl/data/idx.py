"""Reader for the IDX format (MNIST / Fashion-MNIST), gzip-compressed or raw."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from automl.data.errors import DatasetError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path, hint: str = "") -> np.ndarray:
    """Read one IDX file; any truncation or bad header is a DatasetError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing file {path}. {hint}".strip())
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: damaged deflate data, not an OSError
        raise DatasetError(f"cannot read {path} ({type(exc).__name__}: {exc}); the file is corrupt. {hint}".strip()) from exc
    if len(raw) < 4:
        raise DatasetError(f"{path} is too short to be an IDX file; the file is corrupt. {hint}".strip())
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code not in _DTYPES or ndim == 0:
        raise DatasetError(f"{path} has no valid IDX header; the file is corrupt. {hint}".strip())
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetError(f"{path}: truncated IDX header; the file is corrupt. {hint}".strip())
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = np.dtype(_DTYPES[dtype_code])
    expected = int(np.prod(dims)) * dtype.itemsize
    payload = raw[header_len:]
    if len(payload) != expected:
        raise DatasetError(
            f"{path}: expected {expected} data bytes for shape {dims}, found {len(payload)}; "
            f"the file is corrupt. {hint}".strip())
    return np.frombuffer(payload, dtype=dtype).reshape(dims).copy()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write an IDX file (gzip if the name ends with .gz); used by tests and tools."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}
    array = np.ascontiguousarray(array)
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(data)
    return path
