"""``.npz`` archives: each member's declared size checked before it is inflated."""

from __future__ import annotations

import io
import zipfile
from typing import BinaryIO

from ..errors import InputError
from .common import _NPY_MAGIC, _short
from .npy import ShapeCheck, _Array, _npy_from_stream
from .sources import _Source


class _Npz:
    """The members of an .npz archive by key ("logits" for "logits.npy"), read on demand."""

    def __init__(self, src: _Source, max_bytes: int) -> None:
        self.name = src.name
        self.max_bytes = max_bytes
        self._read_total = 0
        try:
            target: str | BinaryIO = (
                src.path if src.path is not None else io.BytesIO(src.data or b"")
            )
            self.zip = zipfile.ZipFile(target)
            infos = [i for i in self.zip.infolist() if not i.is_dir()]
        except Exception as exc:
            # on damaged bytes zipfile raises BadZipFile but also IndexError, struct.error,
            # UnicodeDecodeError, ...: each means the archive cannot be read
            raise InputError(f"{self.name}: cannot read the .npz archive ({_short(exc)})") from None
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            self.members[key] = info
        if not any(n.endswith(".npy") for n in self.zip.namelist()) and any(
            n == "data.pkl" or n.endswith("/data.pkl") for n in self.zip.namelist()
        ):
            # torch.save writes a zip of <name>/data.pkl (a pickle) and raw storages
            self.zip.close()
            raise InputError(
                f"{self.name}: a PyTorch checkpoint (torch.save), not an .npz; save the tensor "
                "with numpy.save, e.g. np.save('logits.npy', t.float().numpy())"
            )
        if not self.members:
            self.zip.close()
            raise InputError(f"{self.name}: the .npz archive holds no arrays")

    def keys_text(self) -> str:
        return ", ".join(repr(k) for k in self.members)

    def read(self, key: str, check_shape: ShapeCheck | None = None) -> _Array:
        info = self.members[key]
        where = f"{self.name}[{key!r}]"
        # the declared uncompressed size is checked before a single byte is inflated: a few KiB
        # of DEFLATE can expand to gigabytes (a zip bomb)
        if info.file_size > self.max_bytes or self._read_total + info.file_size > self.max_bytes:
            raise InputError(
                f"{where}: declares {info.file_size} bytes uncompressed, over the max_bytes limit "
                f"of {self.max_bytes}; refusing to decompress it (raise it with --max-bytes)"
            )
        self._read_total += info.file_size
        try:
            with self.zip.open(info) as fp:
                head = fp.read(len(_NPY_MAGIC))
                if head != _NPY_MAGIC:
                    raise InputError(f"{where}: member {info.filename!r} is not a .npy array")
                # start again so that numpy's header reader sees the magic
            with self.zip.open(info) as fp:
                return _npy_from_stream(
                    fp,  # type: ignore[arg-type]
                    info.file_size,
                    where,
                    self.max_bytes,
                    check_shape,
                )
        except InputError:
            raise
        except Exception as exc:  # zipfile/zlib on a damaged member: see __init__
            raise InputError(f"{where}: cannot read the member ({_short(exc)})") from None

    def close(self) -> None:
        self.zip.close()
