"""kv.bin of a kept context, written and read in fixed-size pieces, each with an xxh3-128
checksum. Reads run in a few threads (preadv releases the GIL) into pinned host buffers and go
to the device in order, so disk or RAM, host-to-device copy and checksums overlap."""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import xxhash

PIECE_BYTES = 64 << 20
READ_THREADS = 8
PIECES_IN_FLIGHT = 12


class CorruptContextError(Exception):
    """kv.bin is shorter than its meta says, or a piece's checksum differs."""


def piece_ranges(part_bytes: int, piece_bytes: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges of one part's pieces."""
    return [(a, min(a + piece_bytes, part_bytes)) for a in range(0, part_bytes, piece_bytes)]


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's bytes as a flat uint8 view."""
    return t.reshape(-1).view(torch.uint8)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.numpy()


class KVWriter:
    """Appends parts to one or more open kv.bin files at once, checksumming each piece.
    A file that fails (disk full) is dropped from the set; `failed` says which and why."""

    def __init__(self, files: dict[str, object], piece_bytes: int, device: torch.device):
        self.files, self.piece_bytes = dict(files), piece_bytes
        self.failed: dict[str, str] = {}
        self.written = 0
        self.checksums: list[str] = []
        self._pinned = (torch.empty(piece_bytes, dtype=torch.uint8, pin_memory=True)
                        if device.type == "cuda" else None)

    def write_part(self, part: torch.Tensor) -> None:
        """part: [kv_heads, n, head_dim] on any device (need not be contiguous)."""
        flat = as_bytes(part.contiguous())
        for a, b in piece_ranges(flat.numel(), self.piece_bytes):
            if self._pinned is not None:
                host = self._pinned[:b - a]
                host.copy_(flat[a:b])
            else:
                host = flat[a:b]
            buf = _np(host)
            self.checksums.append(xxhash.xxh3_128_hexdigest(buf))
            for name, f in list(self.files.items()):
                try:
                    f.write(memoryview(buf))
                except OSError as e:
                    self.failed[name] = f"{e.strerror or e} after {self.written / 2**30:.2f} GiB"
                    del self.files[name]
            self.written += b - a


def read_parts(path: Path, num_parts: int, part_bytes: int, piece_bytes: int,
               checksums: list[str], staging: torch.Tensor,
               on_part: Callable[[int, torch.Tensor], None],
               threads: int = READ_THREADS) -> None:
    """Reads kv.bin part by part into `staging` ([part_bytes] uint8 on the cache's device) and
    calls on_part(index, staging) once each part is whole. Raises CorruptContextError on a short
    file or a checksum that differs (after which what on_part received must not be used)."""
    size = os.path.getsize(path)
    if size != num_parts * part_bytes:
        raise CorruptContextError(f"kv.bin has {size} bytes, its meta says {num_parts * part_bytes}")
    ranges = piece_ranges(part_bytes, piece_bytes)
    if len(checksums) != num_parts * len(ranges):
        raise CorruptContextError(f"{len(checksums)} checksums for {num_parts * len(ranges)} pieces")
    on_cuda = staging.device.type == "cuda"
    jobs = [(p, a, b) for p in range(num_parts) for a, b in ranges]
    fd = os.open(path, os.O_RDONLY)
    try:
        if on_cuda:
            _read_to_cuda(fd, jobs, part_bytes, piece_bytes, checksums, staging, on_part, threads)
        else:
            _read_to_host(fd, jobs, part_bytes, checksums, staging, on_part, threads)
    finally:
        os.close(fd)


def _read_into(fd: int, buf: np.ndarray, offset: int) -> str:
    view, done = memoryview(buf), 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise CorruptContextError(f"kv.bin ended at byte {offset + done}")
        done += n
    return xxhash.xxh3_128_hexdigest(buf)


def _check(digest: str, expected: str, index: int) -> None:
    if digest != expected:
        raise CorruptContextError(f"checksum of piece {index} differs from the one kept")


def _read_to_host(fd, jobs, part_bytes, checksums, staging, on_part, threads) -> None:
    """CPU cache: each part is read straight into staging, its pieces in parallel."""
    by_part: dict[int, list[tuple[int, int, int]]] = {}
    for i, (p, a, b) in enumerate(jobs):
        by_part.setdefault(p, []).append((i, a, b))
    with ThreadPoolExecutor(threads) as pool:
        for p, pieces in by_part.items():
            futs = [(i, pool.submit(_read_into, fd, _np(staging[a:b]), p * part_bytes + a))
                    for i, a, b in pieces]
            for i, f in futs:
                _check(f.result(), checksums[i], i)
            on_part(p, staging)


def _read_to_cuda(fd, jobs, part_bytes, piece_bytes, checksums, staging, on_part, threads) -> None:
    """GPU cache: pieces are read ahead into a ring of pinned buffers; each goes to staging by an
    asynchronous copy, and the buffer is reused once that copy has finished."""
    n_buf = min(PIECES_IN_FLIGHT, len(jobs))
    bufs = [torch.empty(piece_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(n_buf)]
    copied: list[torch.cuda.Event | None] = [None] * n_buf
    pending: dict[int, Future] = {}

    def submit(i: int, pool: ThreadPoolExecutor) -> None:
        slot = i % n_buf
        if copied[slot] is not None:
            copied[slot].synchronize()
        p, a, b = jobs[i]
        pending[i] = pool.submit(_read_into, fd, _np(bufs[slot][:b - a]), p * part_bytes + a)

    with ThreadPoolExecutor(threads) as pool:
        for i in range(n_buf):
            submit(i, pool)
        for i, (p, a, b) in enumerate(jobs):
            _check(pending.pop(i).result(), checksums[i], i)
            slot = i % n_buf
            staging[a:b].copy_(bufs[slot][:b - a], non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
            copied[slot] = ev
            if b == part_bytes:
                on_part(p, staging)
            if i + n_buf < len(jobs):
                submit(i + n_buf, pool)
    torch.cuda.current_stream(staging.device).synchronize()


def write_tokens(path: Path, token_ids: Iterable[int]) -> None:
    np.asarray(list(token_ids), dtype=np.int32).tofile(path)


def read_tokens(path: Path) -> list[int]:
    return np.fromfile(path, dtype=np.int32).tolist()


def material_digest(token_ids: list[int]) -> str:
    return xxhash.xxh3_128_hexdigest(np.asarray(token_ids, dtype=np.int32).tobytes())
