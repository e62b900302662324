"""A lean GGUF reader: metadata as Python values, tensors as views of one read-only memory map.

gguf.GGUFReader builds numpy views for every string of a 50K-token vocabulary (~5 s);
this reads the same header in a fraction of that. Tensor data are dequantized by gguf.quants.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turboctx.errors import ModelLoadError

_NUMERIC = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
            6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]       # HF order (outermost first), e.g. [out, in]
    type_name: str               # GGMLQuantizationType name: "F32", "Q4_1", ...
    qtype: Any                   # gguf.GGMLQuantizationType, or the raw int when gguf does not know it
    data: np.ndarray | None      # uint8 [rows, bytes per row], a view of the file map


class GGUFFile:
    def __init__(self, path: str | Path):
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = Path(path)
        self._map = np.memmap(self.path, mode="r", dtype=np.uint8)
        self._buf = memoryview(self._map)
        try:
            magic, version = struct.unpack_from("<4sI", self._buf, 0)
            if magic != b"GGUF" or version not in (2, 3):
                raise ModelLoadError(f"{self.path} is not a GGUF v2/v3 file (magic {magic!r}, "
                                     f"version {version})")
            n_tensors, n_kv = struct.unpack_from("<QQ", self._buf, 8)
            self._off = 24
            self.fields: dict[str, Any] = {}
            for _ in range(n_kv):
                key = self._str()
                self.fields[key] = self._value(self._u32())
            infos = []
            for _ in range(n_tensors):
                name = self._str()
                dims = [self._u64() for _ in range(self._u32())]
                infos.append((name, dims, self._u32(), self._u64()))
        except (struct.error, UnicodeDecodeError, IndexError) as e:
            raise ModelLoadError(f"GGUF file {self.path} is truncated or corrupt: {e}") from e
        align = int(self.fields.get("general.alignment", 32))
        start = -(-self._off // align) * align
        self.tensors: list[GGUFTensor] = []
        for name, dims, raw_type, offset in infos:
            shape = tuple(int(d) for d in reversed(dims))
            try:
                qtype = GGMLQuantizationType(raw_type)
                block, type_size = GGML_QUANT_SIZES[qtype]
                type_name = qtype.name
            except (ValueError, KeyError):
                self.tensors.append(GGUFTensor(name, shape, f"type#{raw_type}", raw_type, None))
                continue
            row = shape[-1] if shape else 1
            rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            row_bytes = row // block * type_size
            begin = start + offset
            data = self._map[begin:begin + rows * row_bytes].reshape(rows, row_bytes)
            self.tensors.append(GGUFTensor(name, shape, type_name, qtype, data))

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    # ---- parsing ----
    def _u32(self) -> int:
        (v,) = struct.unpack_from("<I", self._buf, self._off)
        self._off += 4
        return v

    def _u64(self) -> int:
        (v,) = struct.unpack_from("<Q", self._buf, self._off)
        self._off += 8
        return v

    def _str(self) -> str:
        n = self._u64()
        s = bytes(self._buf[self._off:self._off + n]).decode("utf-8", errors="replace")
        self._off += n
        return s

    def _value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self._str()
        if vtype == _ARRAY:
            item_type, count = self._u32(), self._u64()
            if item_type in _NUMERIC:
                dtype = np.dtype(_NUMERIC[item_type]).newbyteorder("<")
                arr = np.frombuffer(self._buf, dtype=dtype, count=count, offset=self._off)
                self._off += arr.nbytes
                return arr.tolist()
            return [self._value(item_type) for _ in range(count)]
        if vtype in _NUMERIC:
            dtype = np.dtype(_NUMERIC[vtype]).newbyteorder("<")
            (v,) = np.frombuffer(self._buf, dtype=dtype, count=1, offset=self._off)
            self._off += dtype.itemsize
            return v.item()
        raise ModelLoadError(f"GGUF file {self.path} has an unknown metadata value type {vtype}")
