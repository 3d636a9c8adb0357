"""zarr stores checked before zarr reads them: metadata and codecs allow-listed, chunks bounded.

zarr decodes a chunk with whatever codec the metadata names; with older numcodecs a v2
``pickle`` filter or an object dtype runs code from the data, and a 20 KiB zstd or gzip chunk
can inflate to gigabytes. So smcheck reads the array's metadata itself (a bounded JSON file,
never through zarr), refuses any dtype, codec, filter, chunk grid or storage transformer not on
the allow-lists below, and then lets zarr read chunks only through :class:`GuardedStore`, which
refuses links, FIFOs and devices and checks each chunk's declared decoded size before zarr
decodes it. This does not depend on the numcodecs version installed.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .common import _check_dtype, _reason, dims

# v3 codecs: "bytes" (the array's bytes, with an endianness), "transpose" (a reordering of
# axes), "crc32c" (a 4-byte checksum) and one compressor; none of them can run code
_V3_CODECS = frozenset({"bytes", "transpose", "crc32c", "zstd", "blosc", "gzip"})
# v2 compressors with a bounded decode (below); filters run before the compressor and are where
# pickle, msgpack and object codecs live: none is accepted
_V2_COMPRESSORS = frozenset({"zstd", "blosc", "gzip", "zlib"})
_V2_FILTERS: frozenset[str] = frozenset()
# zarr v3 type names numpy would read as something else ("string" as bytes); everything numpy
# parses is then checked by _check_dtype (floats, integers and bool pass)
_NOT_NUMBERS = frozenset({"string", "bytes", "variable_length_utf8", "variable_length_bytes"})
#: Largest metadata file read (zarr.json / .zarray): array metadata is a few hundred bytes.
MAX_METADATA_BYTES = 1 << 20
#: Most chunks a store may declare: 10**15 rows in chunks of 1000 would be 10**12 files, a
#: store no one wrote, and a run that would never end.
MAX_CHUNKS = 10**8
_METADATA_KEYS = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
_ZSTD_MAGIC = 0xFD2FB528


@dataclass(frozen=True)
class StoreFacts:
    """What the metadata declares, checked: shape, chunk shape, dtype, and how chunks decode."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    compressor: str | None  # "zstd", "blosc", "gzip", "zlib", or None (raw bytes)
    trailer: int  # bytes a crc32c after the compressor appends to each chunk
    key_prefix: str = ""  # "c" + separator for v3's default chunk keys ("c/0/0")
    separator: str = "."

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one decoded chunk."""
        return math.prod(self.chunks) * self.dtype.itemsize

    def chunk_keys(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> list[str]:
        """Store keys of the chunks holding elements lo..hi (inclusive, per axis)."""
        if not self.shape:
            return [self.key_prefix.rstrip(self.separator) or "0"]
        ranges = [range(a // c, b // c + 1) for a, b, c in zip(lo, hi, self.chunks, strict=True)]
        return [
            self.key_prefix + self.separator.join(map(str, idx))
            for idx in itertools.product(*ranges)
        ]


def read_small(path: str, where: str, limit: int) -> bytes:
    """A regular file of at most ``limit`` bytes; a link, FIFO or device is refused unread.

    ``O_NOFOLLOW`` refuses a symbolic link and ``O_NONBLOCK`` keeps a FIFO from blocking the
    open; the file's type is then checked on the open descriptor, so it cannot be swapped.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                f"{where}: is a symbolic link; links in a zarr store are not followed"
            ) from None
        raise InputError(f"{where}: cannot read: {_reason(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{where}: is not a regular file (a FIFO, socket or device); refused")
        if st.st_size > limit:
            raise InputError(
                f"{where}: {st.st_size} bytes, over the limit of {limit} for this file"
            )
        parts = []
        left = st.st_size
        while left > 0:
            got = os.read(fd, min(left, 1 << 24))
            if not got:
                break
            parts.append(got)
            left -= len(got)
        return b"".join(parts)
    except OSError as exc:
        raise InputError(f"{where}: cannot read: {_reason(exc)}") from None
    finally:
        os.close(fd)


def check_store(path: str, where: str, max_bytes: int) -> StoreFacts | None:
    """The array metadata at ``path`` checked against the allow-lists, before zarr opens it.

    Returns None for a group (zarr opens it to list its arrays; a group has no chunks).
    """
    v3 = os.path.join(path, "zarr.json")
    meta_path = v3 if os.path.lexists(v3) else os.path.join(path, ".zarray")
    if not os.path.lexists(meta_path):
        return None  # a v2 group (.zgroup): zarr says so
    name = f"{where}/{os.path.basename(meta_path)}"
    raw = read_small(meta_path, name, MAX_METADATA_BYTES)
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InputError(
            f"{where}: not a readable zarr array (bad JSON in {name}: {exc})"
        ) from None
    if not isinstance(meta, dict):
        raise InputError(f"{where}: not a readable zarr array ({name} is not a JSON object)")
    if meta_path == v3:
        if meta.get("node_type") == "group":
            return None
        facts = _v3_facts(meta, where)
    else:
        facts = _v2_facts(meta, where)
    _check_grid(facts, where, max_bytes)
    return facts


def _v3_facts(meta: dict[str, Any], where: str) -> StoreFacts:
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise InputError(f"{where}: not a readable zarr array (zarr.json is not v3 array metadata)")
    dtype_name = meta.get("data_type")
    if isinstance(dtype_name, dict):
        dtype_name = dtype_name.get("name")
    dtype = _dtype(dtype_name, where)
    grid = meta.get("chunk_grid")
    if not isinstance(grid, dict) or grid.get("name") != "regular":
        raise InputError(f"{where}: chunk grid {_shown(grid)} is not supported; expected regular")
    chunks = (grid.get("configuration") or {}).get("chunk_shape")
    if meta.get("storage_transformers"):
        raise InputError(f"{where}: storage transformers are not supported")
    codecs = meta.get("codecs")
    if not isinstance(codecs, list) or not codecs:
        raise InputError(f"{where}: not a readable zarr array (no codecs list)")
    names = [c.get("name") if isinstance(c, dict) else c for c in codecs]
    for n in names:
        if n not in _V3_CODECS:
            raise InputError(
                f"{where}: codec {_shown(n)} is not allowed "
                f"(allowed: {', '.join(sorted(_V3_CODECS))})"
            )
    compressors = [n for n in names if n in ("zstd", "blosc", "gzip")]
    if len(compressors) > 1:
        raise InputError(f"{where}: more than one compressor ({', '.join(compressors)})")
    at = names.index(compressors[0]) if compressors else len(names)
    trailer = 4 * names[at:].count("crc32c")
    encoding = meta.get("chunk_key_encoding") or {"name": "default"}
    name = encoding.get("name") if isinstance(encoding, dict) else None
    sep = ((encoding.get("configuration") or {}) if isinstance(encoding, dict) else {}).get(
        "separator", "/" if name == "default" else "."
    )
    if name not in ("default", "v2") or sep not in ("/", "."):
        raise InputError(f"{where}: chunk key encoding {_shown(encoding)} is not supported")
    return StoreFacts(
        _dims(meta.get("shape"), "shape", where, 0),
        _dims(chunks, "chunk shape", where, 0),
        dtype,
        compressors[0] if compressors else None,
        trailer,
        "c" + sep if name == "default" else "",
        sep,
    )


def _v2_facts(meta: dict[str, Any], where: str) -> StoreFacts:
    if meta.get("zarr_format") != 2:
        raise InputError(f"{where}: not a readable zarr array (.zarray is not v2 metadata)")
    dtype_text = meta.get("dtype")
    dtype = _dtype(dtype_text, where)
    for f in meta.get("filters") or []:
        fid = f.get("id") if isinstance(f, dict) else f
        if fid not in _V2_FILTERS:
            raise InputError(f"{where}: filter {_shown(fid)} is not allowed (no filters are)")
    comp = meta.get("compressor")
    cid = comp.get("id") if isinstance(comp, dict) else comp
    if cid is not None and cid not in _V2_COMPRESSORS:
        raise InputError(
            f"{where}: compressor {_shown(cid)} is not allowed "
            f"(allowed: {', '.join(sorted(_V2_COMPRESSORS))})"
        )
    if meta.get("order", "C") not in ("C", "F"):
        raise InputError(f"{where}: order {_shown(meta.get('order'))} is not C or F")
    sep = meta.get("dimension_separator", ".")
    if sep not in ("/", "."):
        raise InputError(f"{where}: dimension separator {_shown(sep)} is not supported")
    return StoreFacts(
        _dims(meta.get("shape"), "shape", where, 0),
        _dims(meta.get("chunks"), "chunk shape", where, 0),
        dtype,
        cid,
        0,
        "",
        sep,
    )


def _dtype(name: Any, where: str) -> np.dtype:
    """The dtype the metadata names, if numpy reads it as a plain number type.

    Only a short type string is parsed ("<f4", "float32"): a v2 list (a structured dtype) or a
    v3 object (an extension type) is refused by name.
    """
    dtype = None
    if isinstance(name, str) and len(name) <= 16 and name not in _NOT_NUMBERS:
        try:
            dtype = np.dtype(name)
        except (TypeError, ValueError):
            dtype = None
    if dtype is None:
        raise InputError(
            f"{where}: dtype {_shown(name)} is not numeric; expected float16/32/64 (or integers)"
        )
    _check_dtype(dtype, where)  # objects (a pickle), complex, void, strings: refused by name
    return dtype


def _dims(value: Any, what: str, where: str, least: int) -> tuple[int, ...]:
    ok = isinstance(value, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= least for d in value
    )
    if not ok:
        rule = "positive integers" if least else "integers >= 0"
        raise InputError(f"{where}: {what} {_shown(value)} in the metadata must be {rule}")
    return tuple(value)


def _check_grid(facts: StoreFacts, where: str, max_bytes: int) -> None:
    if len(facts.chunks) != len(facts.shape):
        raise InputError(
            f"{where}: chunk shape {dims(facts.chunks)} does not match shape {dims(facts.shape)} "
            "in length"
        )
    for s, c in zip(facts.shape, facts.chunks, strict=True):
        if c == 0 and s > 0:  # zarr writes chunk 0 for an empty axis only; else it divides by 0
            raise InputError(
                f"{where}: chunk shape {dims(facts.chunks)} has a zero on an axis of length {s}; "
                "chunk sizes must be positive"
            )
    if facts.chunk_bytes > max_bytes:
        raise InputError(
            f"{where}: one chunk ({dims(facts.chunks)}) holds {facts.chunk_bytes} bytes, over the "
            f"max_bytes limit of {max_bytes}; raise it with --max-bytes, or rechunk the store"
        )
    count = math.prod(-(-s // max(c, 1)) for s, c in zip(facts.shape, facts.chunks, strict=True))
    if count > MAX_CHUNKS:
        raise InputError(
            f"{where}: shape {dims(facts.shape)} in chunks of {dims(facts.chunks)} is {count} "
            f"chunks, over the limit of {MAX_CHUNKS}; store it in larger chunks"
        )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_inflated(data: bytes, facts: StoreFacts, where: str) -> None:
    """Refuse a chunk whose decoded size would exceed what its chunk shape holds.

    zstd and blosc declare the decoded size in their header, and numcodecs allocates that much
    before decoding: the header is read. gzip and zlib declare nothing reliable: the stream is
    inflated here with an output bound, one byte past the limit at most.
    """
    limit = facts.chunk_bytes
    body = data[: len(data) - facts.trailer] if facts.trailer else data
    comp = facts.compressor
    declared: int | None
    if comp is None:
        declared = len(body)
    elif comp == "blosc":
        declared = struct.unpack_from("<I", body, 4)[0] if len(body) >= 16 else None
    elif comp == "zstd":
        declared = _zstd_content_size(body)
    else:
        declared = _inflated_size(body, 31 if comp == "gzip" else 15, limit)
    if declared is None:
        raise InputError(f"{where}: a {comp} chunk that does not declare its decoded size")
    if declared > limit:
        raise InputError(
            f"{where}: chunk decodes to {declared}{'+' if declared == limit + 1 else ''} bytes, "
            f"but a chunk of {facts.chunks} {facts.dtype.name} holds {limit}; refused unread"
        )


def _zstd_content_size(b: bytes) -> int | None:
    """The frame content size of a zstd frame header (RFC 8878, 3.1.1.1), None if absent."""
    if len(b) < 6 or struct.unpack_from("<I", b)[0] != _ZSTD_MAGIC:
        return None
    fhd = b[4]
    fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
    dict_size = (0, 1, 2, 4)[fhd & 3]
    pos = 5 + (0 if single else 1) + dict_size
    size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(b) < pos + size:
        return None
    value = int.from_bytes(b[pos : pos + size], "little")
    return value + 256 if size == 2 else value


def _inflated_size(b: bytes, wbits: int, limit: int) -> int:
    """Bytes a (possibly multi-member) gzip/zlib stream inflates to, counted up to limit + 1."""
    total = 0
    rest = b
    try:
        while rest and total <= limit:
            d = zlib.decompressobj(wbits)
            total += len(d.decompress(rest, limit + 1 - total))
            if d.unconsumed_tail:  # output stopped at the bound with input left: over the limit
                return limit + 1
            rest = d.unused_data if wbits == 31 else b""
    except zlib.error:
        return total  # corrupt: zarr's own decode reports it
    return min(total, limit + 1)


class GuardedStore:
    """Factory of a read-only zarr ``LocalStore`` whose reads go through :func:`read_small`.

    A subclass is built on first use, so that importing smcheck does not import zarr.
    """

    _cls: type | None = None

    @classmethod
    def open(cls, path: str, where: str, facts: StoreFacts | None, max_bytes: int) -> Any:
        if cls._cls is None:
            cls._cls = _make_store_class()
        return cls._cls(path, where, facts, max_bytes)


def _make_store_class() -> type:
    from zarr.storage import LocalStore

    class _Store(LocalStore):  # type: ignore[misc]
        def __init__(self, root: str, where: str, facts: StoreFacts | None, max_bytes: int) -> None:
            super().__init__(os.path.realpath(root), read_only=True)
            self.where, self.facts, self.max_bytes = where, facts, max_bytes
            self.refused: InputError | None = None  # the first chunk refused
            self.checked: dict[str, bytes | None] = {}  # chunks read by precheck(), for zarr

        def precheck(self, keys: list[str]) -> None:
            """Read and check ``keys`` now, outside zarr's tasks: a refusal raises here, and
            zarr then gets the checked bytes without reading the files again."""
            for key in keys:
                self.checked[key] = self.read_key(key)

        def forget(self, keys: list[str]) -> None:
            for key in keys:
                self.checked.pop(key, None)

        def with_read_only(self, read_only: bool = False) -> Any:
            return type(self)(str(self.root), self.where, self.facts, self.max_bytes)

        def __reduce__(self) -> Any:
            return (type(self), (str(self.root), self.where, self.facts, self.max_bytes))

        def _read(self, key: str, prototype: Any) -> Any:
            try:
                data = self.checked.pop(key) if key in self.checked else self.read_key(key)
            except InputError as exc:
                # raising here, inside one of zarr's gathered tasks, would leave the others
                # pending ("Task was destroyed but it is pending!" at exit): an empty chunk
                # fails to decode instead, and the reader reports this error
                if self.refused is None:
                    self.refused = exc
                data = b""
            return None if data is None else prototype.buffer.from_bytes(data)

        def read_key(self, key: str) -> bytes | None:
            """The bytes of ``key``, checked; None where zarr expects a missing key."""
            parts = key.split("/")
            if any(p in ("", ".", "..") for p in parts):
                raise InputError(f"{self.where}: bad key {_shown(key)} in the store")
            path = os.path.join(str(self.root), *parts)
            where = f"{self.where}/{key}"
            for i in range(1, len(parts)):  # no directory on the way may be a link
                sub = os.path.join(str(self.root), *parts[:i])
                try:
                    mode = os.lstat(sub).st_mode
                except OSError:
                    return None
                if stat.S_ISLNK(mode):
                    raise InputError(
                        f"{self.where}/{'/'.join(parts[:i])}: is a symbolic link; links in a "
                        "zarr store are not followed"
                    )
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                return None
            if stat.S_ISDIR(mode):
                return None
            metadata = parts[-1] in _METADATA_KEYS
            limit = MAX_METADATA_BYTES if metadata else self.max_bytes
            data = read_small(path, where, limit)
            if not metadata and self.facts is not None:
                check_inflated(data, self.facts, where)
            return data

        async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
            if byte_range is not None:  # only sharding reads ranges, and it is not allowed
                raise InputError(f"{self.where}: partial chunk reads are not supported")
            if prototype is None:
                from zarr.core.buffer.core import default_buffer_prototype

                prototype = default_buffer_prototype()
            return self._read(key, prototype)

        def get_sync(self, key: str, *, prototype: Any = None, byte_range: Any = None) -> Any:
            if byte_range is not None:
                raise InputError(f"{self.where}: partial chunk reads are not supported")
            if prototype is None:
                from zarr.core.buffer.core import default_buffer_prototype

                prototype = default_buffer_prototype()
            return self._read(key, prototype)

        async def get_partial_values(self, prototype: Any, key_ranges: Any) -> list[Any]:
            raise InputError(f"{self.where}: partial chunk reads are not supported")

    return _Store
