"""Kept contexts on host RAM and disk: a prompt prefix's KV, saved under a name and loaded back by
a later process instead of prefilling it again.

Tiers, fastest first: host RAM (a tmpfs folder, /dev/shm: it outlives the process, not a reboot)
and disk (`$TURBOCTX_HOME/contexts`). The GPU tier in front of them is the engine's prefix cache.
Each tier has a size limit and drops its least recently used contexts to make room.

One context is a folder `<tier>/<name>/`:
    meta.json   what it is (ContextMeta): fingerprint, token counts, per-part checksums
    tokens.bin  int32 token ids of the material it was made from (the whole prefix given)
    kv.bin      for each layer: K [kv_heads, num_tokens, head_dim] then V, in the cache dtype
                (contexts/kv_file.py reads and writes it)
It is written under a temporary name and renamed when complete, so a reader never sees half.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from turboctx.errors import InvalidRequestError

log = logging.getLogger("turboctx")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RAM_ROOT = Path("/dev/shm")
GiB = 1 << 30


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidRequestError(
            f"context name {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit")
    return name


@dataclass
class ContextMeta:
    name: str
    fingerprint: dict            # contexts/fingerprint.py
    digest: str                  # fingerprint_digest(fingerprint)
    material_digest: str         # xxh3-128 of the material's token ids (tokens.bin)
    num_material_tokens: int     # tokens of the prefix given (the document part of a prompt)
    num_tokens: int              # tokens whose KV is kept: whole cache blocks of the material
    last_block_hash: str         # hex chained hash of the last kept block (kv_cache.block_hashes)
    part_shape: list[int]        # one K or V part: [kv_heads, num_tokens, head_dim]
    dtype: str
    num_parts: int               # 2 per layer: layer 0 K, layer 0 V, layer 1 K, ...
    part_bytes: int
    piece_bytes: int             # kv.bin is read, written and checksummed in pieces of this size
    checksums: list[str] = field(default_factory=list)   # xxh3-128 of each piece, in file order
    created: float = 0.0
    last_used: float = 0.0

    @property
    def nbytes(self) -> int:
        return self.part_bytes * self.num_parts

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ContextMeta":
        d = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Tier:
    name: str        # "ram" | "disk"
    root: Path
    limit_bytes: int

    def path(self, name: str) -> Path:
        return self.root / name

    def entries(self) -> list[tuple[ContextMeta | None, Path]]:
        """Every context folder here with its meta (None: unreadable meta)."""
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if p.name.startswith(".") or not p.is_dir():
                continue
            out.append((read_meta(p), p))
        return out

    def used_bytes(self, skip: str | None = None) -> int:
        return sum(folder_bytes(p) for m, p in self.entries() if p.name != skip)

    def make_room(self, nbytes: int, keep: str) -> bool:
        """Drops least recently used contexts (not `keep`) until nbytes more fit the limit and the
        free space; False when they cannot."""
        if nbytes > self.limit_bytes:
            return False
        others = sorted(((m.last_used if m else 0.0, p) for m, p in self.entries() if p.name != keep),
                        key=lambda x: x[0])
        used = sum(folder_bytes(p) for _, p in others)
        while others and (used + nbytes > self.limit_bytes or free_bytes(self.root) < nbytes):
            _, p = others.pop(0)
            used -= folder_bytes(p)
            log.info("kept contexts (%s): dropping %s, least recently used, to make room", self.name, p.name)
            shutil.rmtree(p, ignore_errors=True)
        return used + nbytes <= self.limit_bytes and free_bytes(self.root) >= nbytes


def read_meta(folder: Path) -> ContextMeta | None:
    try:
        return ContextMeta.from_json((folder / "meta.json").read_text())
    except (OSError, ValueError, TypeError):
        return None


def folder_bytes(p: Path) -> int:
    try:
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file())
    except OSError:
        return 0


def free_bytes(root: Path) -> int:
    try:
        root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(root).free
    except OSError:
        return 0


def parse_size(text: str | int, what: str) -> int:
    """Bytes from 123, '64G', '512M', '1.5T' (powers of 1024)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not m:
        raise InvalidRequestError(f"{what}={text!r} is not a size: give bytes or a number with "
                                  f"K, M, G or T (e.g. 64G)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def default_ram_limit() -> int:
    """Half the machine's memory (tmpfs's own default size); the free space is checked too."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 4 * GiB


class ContextStore:
    """The RAM and disk tiers of kept contexts (see the module doc).

    ram_limit / disk_limit: bytes or sizes like "64G"; 0 turns a tier off. Environment:
    TURBOCTX_HOME (the disk tier is its contexts/), TURBOCTX_CONTEXT_RAM_DIR (the RAM tier's
    folder, default /dev/shm/turboctx-<uid>), TURBOCTX_CONTEXT_RAM_LIMIT and
    TURBOCTX_CONTEXT_DISK_LIMIT (the limits when not given)."""

    def __init__(self, home: Path | None = None, ram_dir: Path | None = None,
                 ram_limit: int | str | None = None, disk_limit: int | str | None = None):
        from turboctx.home import turboctx_home
        home = Path(home) if home is not None else turboctx_home()
        env = os.environ
        if ram_dir is None:
            ram_dir = Path(env["TURBOCTX_CONTEXT_RAM_DIR"]) if env.get("TURBOCTX_CONTEXT_RAM_DIR") \
                else RAM_ROOT / f"turboctx-{os.getuid()}" / "contexts" if RAM_ROOT.is_dir() else None
        ram_limit = parse_size(ram_limit if ram_limit is not None else
                               env.get("TURBOCTX_CONTEXT_RAM_LIMIT", default_ram_limit()),
                               "ram_limit")
        disk_limit = parse_size(disk_limit if disk_limit is not None else
                                env.get("TURBOCTX_CONTEXT_DISK_LIMIT", "256G"), "disk_limit")
        self.tiers: list[Tier] = []
        if ram_dir is not None and ram_limit > 0:
            self.tiers.append(Tier("ram", Path(ram_dir), ram_limit))
        if disk_limit > 0:
            self.tiers.append(Tier("disk", home / "contexts", disk_limit))

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    # -- what is kept ---------------------------------------------------------------------------
    def list(self) -> list[dict]:
        """One row per name: tokens, bytes, tiers holding it, last use (newest first)."""
        rows: dict[str, dict] = {}
        for t in self.tiers:
            for m, p in t.entries():
                row = rows.setdefault(p.name, {"name": p.name, "tiers": [], "num_tokens": None,
                                               "bytes": 0, "last_used": 0.0, "model": None})
                row["tiers"].append(t.name)
                row["bytes"] = max(row["bytes"], folder_bytes(p))
                if m is not None:
                    row.update(num_tokens=m.num_tokens, model=m.fingerprint.get("model"),
                               last_used=max(row["last_used"], m.last_used))
                else:
                    row["unreadable"] = True
        return sorted(rows.values(), key=lambda r: -r["last_used"])

    def locations(self, name: str) -> list[tuple[Tier, Path, ContextMeta | None]]:
        """Where `name` is kept, fastest tier first."""
        out = []
        for t in self.tiers:
            p = t.path(check_name(name))
            if p.is_dir():
                out.append((t, p, read_meta(p)))
        return out

    def metas(self) -> list[ContextMeta]:
        """The readable meta of every kept context (one per name, fastest tier's)."""
        seen: dict[str, ContextMeta] = {}
        for t in self.tiers:
            for m, p in t.entries():
                if m is not None and p.name not in seen:
                    seen[p.name] = m
        return list(seen.values())

    def remove(self, name: str, tier: Tier | None = None) -> bool:
        """Removes `name` from one tier or all; False when it was not there."""
        found = False
        for t in [tier] if tier is not None else self.tiers:
            p = t.path(check_name(name))
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
                found = True
        return found

    def touch(self, folder: Path, meta: ContextMeta) -> None:
        """Marks a context used now (the LRU order)."""
        meta.last_used = time.time()
        try:
            tmp = folder / ".meta.json.tmp"
            tmp.write_text(meta.to_json())
            tmp.replace(folder / "meta.json")
        except OSError as e:
            log.debug("could not update %s: %s", folder, e)


def write_context(store: ContextStore, meta: ContextMeta, token_ids: list[int], parts,
                  device) -> tuple[list[str], list[str]]:
    """Writes one context to every tier that has room: parts yields its K and V parts in file
    order. Returns (tiers written, warnings). A tier that fails (disk full) keeps nothing of it:
    the partial folder is removed and a warning says why; a tier's older copy is replaced only
    once the new one is whole."""
    from turboctx.contexts.kv_file import KVWriter, write_tokens
    warnings: list[str] = []
    folders: dict[str, Path] = {}
    files: dict[str, object] = {}
    for t in store.tiers:
        if not t.make_room(meta.nbytes, keep=meta.name):
            warnings.append(f"context {meta.name!r} ({meta.nbytes / GiB:.2f} GiB) not kept in {t.name} "
                            f"({t.root}): over its limit of {t.limit_bytes / GiB:.2f} GiB or its free space")
            continue
        tmp = t.root / f".{meta.name}.partial-{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            write_tokens(tmp / "tokens.bin", token_ids)
            files[t.name] = open(tmp / "kv.bin", "wb", buffering=0)
            folders[t.name] = tmp
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            warnings.append(f"context {meta.name!r} not kept in {t.name} ({t.root}): {e.strerror or e}")
    writer = KVWriter(files, meta.piece_bytes, device)
    try:
        for part in parts:
            writer.write_part(part)
            if not writer.files:
                break
    finally:
        for f in files.values():
            try:
                f.close()
            except OSError:
                pass
    meta.checksums = writer.checksums
    meta.created = meta.last_used = time.time()
    written = []
    for name, tmp in folders.items():
        tier = store.tier(name)
        why = writer.failed.get(name)
        if why is None:
            try:
                (tmp / "meta.json").write_text(meta.to_json())
                if name == "disk":
                    _fsync(tmp / "kv.bin")
                final = tier.path(meta.name)
                if final.exists():
                    old = tier.root / f".{meta.name}.old-{os.getpid()}"
                    final.replace(old)
                    tmp.replace(final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    tmp.replace(final)
                written.append(name)
                continue
            except OSError as e:
                why = str(e.strerror or e)
        shutil.rmtree(tmp, ignore_errors=True)
        warnings.append(f"context {meta.name!r} not kept in {name} ({tier.root}): {why}; "
                        f"the partial copy was removed")
    return written, warnings


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
