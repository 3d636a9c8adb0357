"""An input as given (a path, a pipe or stdin) and its format, sniffed from its bytes."""

from __future__ import annotations

import codecs
import os
import stat
import sys
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import InputError
from .common import _NPY_MAGIC, _STREAM_CHUNK, _ZIP_MAGICS, _reason

_KIND_BY_EXTENSION = {
    ".npy": "npy",
    ".npz": "npz",
    ".csv": "text",
    ".tsv": "text",
    ".txt": "text",
}
_KIND_WORDS = {
    "npy": "a .npy array",
    "npz": "a .npz archive",
    "text": "a text file",
    "zarr": "a zarr store",
}
# metadata files that make a directory a zarr node: v3 keeps one zarr.json (node_type "array" or
# "group"); v2 keeps .zarray for an array and .zgroup for a group
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


@dataclass
class _Source:
    """One input as given: a path on disk (``path``) or bytes already read (``data``)."""

    name: str
    path: str | None
    data: bytes | None
    kind: str  # "npy", "npz", "text" or "zarr", by content


def _open_source(
    given: str | os.PathLike[str], stdin: BinaryIO | None, max_bytes: int, notes: list[str]
) -> _Source:
    """Check that ``given`` is a readable file (or ``-``) and sniff its format from its bytes."""
    name = os.fspath(given)
    if name == "-":
        piped = _read_stream(_stdin(stdin), "stdin", max_bytes)
        return _Source("stdin", None, piped, _sniff(piped[:8]))
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise InputError(f"{name}: cannot read: {_reason(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        if any(os.path.isfile(os.path.join(name, m)) for m in _ZARR_MARKERS):
            return _Source(name, name, None, "zarr")
        raise InputError(
            f"{name}: is a directory, expected a .npy, .npz or text file, or a zarr array store "
            "(a directory holding zarr.json or .zarray)"
        )
    data: bytes | None = None
    try:
        with open(name, "rb") as f:  # read only: an input is never opened for writing
            if stat.S_ISREG(st.st_mode):
                head = f.read(8)
            else:  # a pipe such as bash's <(...): it can be read once only, so keep the bytes
                data = _read_stream(f, name, max_bytes)
                head = data[:8]
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {_reason(exc)}") from None
    if data is None and not head:
        raise InputError(f"{name}: is empty, expected a .npy, .npz or text file")
    _refuse_pickle(name, head)
    kind = _sniff(head)
    ext = os.path.splitext(name)[1].lower()
    claimed = _KIND_BY_EXTENSION.get(ext)
    if claimed is not None and claimed != kind:
        notes.append(f"{name} is {_KIND_WORDS[kind]} despite its {ext} extension (read by content)")
    return _Source(name, name if data is None else None, data, kind)


def _stdin(stdin: BinaryIO | None) -> BinaryIO:
    """The stream '-' names, refused when closed (``0<&-``: Python sets sys.stdin to None) or a
    terminal (reading would wait for typing: almost surely a forgotten pipe)."""
    stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
    try:
        closed = stream is None or stream.closed
        tty = not closed and stream is not None and stream.isatty()
    except (OSError, ValueError) as exc:  # a descriptor that is not open or not a stream
        raise InputError(f"stdin ('-'): cannot read: {_reason(exc)}") from None
    if closed or stream is None:
        raise InputError(
            "stdin ('-') is closed; pipe the data in (e.g. cat x.csv | smcheck eval -) or name "
            "a file"
        )
    if tty:
        raise InputError(
            "stdin ('-') is a terminal, and reading it would wait for typing; pipe the data in "
            "(e.g. cat x.csv | smcheck eval -) or name a file"
        )
    return stream


def _read_stream(stream: BinaryIO, name: str, max_bytes: int) -> bytes:
    """Read a stream to its end, refusing more than ``max_bytes`` and obvious binary junk early."""
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = stream.read(_STREAM_CHUNK)
        except (OSError, ValueError) as exc:  # ValueError: a closed stream
            raise InputError(f"{name}: cannot read: {_reason(exc)}") from None
        if not chunk:
            break
        if not chunks:
            _refuse_pickle(name, chunk)
        if not chunks and b"\x00" in chunk and not _is_container(chunk) and not _is_utf16(chunk):
            # stop at once: /dev/zero or a binary blob would otherwise be read up to max_bytes
            raise InputError(f"{name}: looks binary (NUL bytes), expected .npy, .npz or text")
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise InputError(
                f"{name}: more than --max-bytes {max_bytes} bytes; refusing to read on"
            )
    data = b"".join(chunks)
    if not data:
        raise InputError(f"{name}: is empty, expected a .npy, .npz or text file")
    return data


def _refuse_pickle(name: str, head: bytes) -> None:
    """A pickle (protocol 2 to 5 starts with 0x80 and the protocol number): torch.save's legacy
    format or pickle.dump. Unpickling runs code, so it is never loaded; say what to do instead."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise InputError(
            f"{name}: a Python pickle (torch.save's legacy format or pickle.dump), which smcheck "
            "never loads (unpickling runs code); save the array with numpy.save, e.g. "
            "np.save('logits.npy', t.float().numpy())"
        )


def _is_utf16(head: bytes) -> bool:
    return head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))


def _is_container(head: bytes) -> bool:
    return head.startswith(_NPY_MAGIC) or head.startswith(_ZIP_MAGICS)


def _sniff(head: bytes) -> str:
    """The format from the first bytes: the magic numbers of .npy and zip, else text."""
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGICS):
        return "npz"
    return "text"


def _file_bytes(src: _Source, max_bytes: int) -> bytes:
    """All the bytes of a source, refusing a file over ``max_bytes`` before reading it."""
    if src.data is not None:
        return src.data
    assert src.path is not None
    try:
        size = os.path.getsize(src.path)
        if size > max_bytes:
            raise InputError(
                f"{src.name}: {size} bytes is over the --max-bytes limit of {max_bytes} for "
                "text input; save large inputs as .npy (memory-mapped, no limit)"
            )
        with open(src.path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"{src.name}: cannot read: {_reason(exc)}") from None
