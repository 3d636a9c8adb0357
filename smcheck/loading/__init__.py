"""Files -> validated (logits, labels): the only package that reads user input.

Every problem with the data raises :class:`~smcheck.errors.InputError` with one line that names
the file, the row/line/column or array key, what is wrong and what was expected, e.g.
``labels.npy row 7: label 12 is outside [0, 10) (the logits have 10 classes)``. No other
exception type escapes for bad data; option conflicts raise :class:`~smcheck.errors.UsageError`.

Formats are recognised by content, never by extension:

* ``\\x93NUMPY`` - a ``.npy`` array, memory-mapped read-only (never unpickled), its row blocks
  read with positioned reads through :class:`NpyRows`;
* ``PK\\x03\\x04`` - a ``.npz`` archive of ``.npy`` members (sizes checked before decompressing);
* a directory holding ``zarr.json`` (zarr v3) or ``.zarray`` (zarr v2) - a zarr array store, read
  a block of rows at a time through :class:`ZarrLogits` (the optional extra ``[zarr]``);
* anything else - delimited text (comma, tab, semicolon or whitespace), or ``-`` for stdin.

Row numbers of arrays are 0-based indices (as in numpy); text positions are 1-based ``line N``
and ``column M`` as an editor shows them. The rules are listed in ``docs/validation.md``; the
size limits (``max_bytes``) in ``docs/eval.md``.

One module per concern: ``sources`` (a path, pipe or stdin, and its format), ``npy``, ``npz``,
``zarr_guard`` (a store's metadata and chunks checked before zarr reads them), ``zarr_store``,
``text``, ``logits`` (an array shaped into (N, C)), ``labels`` (validated class indices),
``inputs`` (:func:`load_input`), ``values`` (:func:`load_values`, compare's loss/grad files)
and ``common`` (what they share).
"""

from .inputs import LoadedInput, load_input
from .npy import NpyRows
from .values import LoadedValues, load_values
from .zarr_store import ZarrLogits

__all__ = ["LoadedInput", "LoadedValues", "NpyRows", "ZarrLogits", "load_input", "load_values"]
