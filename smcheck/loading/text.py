"""Delimited text (CSV, TSV, whitespace; a file, a pipe or stdin) parsed to float64.

The text is split and parsed a block of lines at a time into a preallocated float64 array, so
a CSV costs its bytes, its float64 values and one block's Python strings: measured 1.9x the
file's size for a 10 MB CSV of 7-digit numbers (tracemalloc), where splitting it whole cost
10.8x. Messages are those of a whole-file parse: a ragged row anywhere is reported before a
bad cell, a bad label before a bad logit, as the first such line of the file.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .common import _short

# A number as smcheck reads it: decimal point '.', optional exponent, inf/infinity/nan in any
# case. Python's float() alone would also take '1_000' and non-ASCII digits.
_NUMBER = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)", re.I | re.ASCII
)
_NUMBER_CHARS = re.compile(r"[^0-9.eE+\-nNaAiIfFtTyY\x1f]")
_NUMBER_START = re.compile(r"[+-]?\.?\d", re.ASCII)
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+(?:[eE][+-]?\d+)?", re.ASCII)


#: Header names that mean "the labels": such a column is never read as one more logit (its
#: -100 would become a logit and the run would go label-free without a word).
LABEL_NAMES = frozenset({"label", "labels", "target", "targets", "y", "class"})

# bytes of text split and parsed per step: its cells as Python strings cost ~10x
_BLOCK_BYTES = 1 << 18


class _LineMap:
    """The 1-based line number of each data row, kept as runs of consecutive lines (a file
    with no blank or comment lines between its rows is one run, not one int per row)."""

    def __init__(self) -> None:
        self._rows: list[int] = []  # first row of each run
        self._lines: list[int] = []  # its line
        self.count = 0

    def append(self, line: int) -> None:
        if not self._rows or line != self._lines[-1] + (self.count - self._rows[-1]):
            self._rows.append(self.count)
            self._lines.append(line)
        self.count += 1

    def __getitem__(self, i: int) -> int:
        k = bisect.bisect_right(self._rows, i) - 1
        return self._lines[k] + (i - self._rows[k])

    def __len__(self) -> int:
        return self.count


def _checked_text(data: bytes, name: str) -> tuple[bytes | str, int]:
    """The text to split and where it starts (after a byte-order mark): UTF-8 bytes, checked
    whole here and decoded a block at a time later, or UTF-16 (what Windows PowerShell's ``>``
    writes, recognised by its BOM) decoded whole."""
    encoding = "utf-8"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif b"\x00" in data:
        raise InputError(f"{name}: looks binary (NUL bytes), expected .npy, .npz or text")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n" if encoding == "utf-8" else b"\n\x00") + 1
        raise InputError(
            f"{name} line {line}: not {encoding.upper()} text (byte {data[exc.start]:#04x}); "
            "expected .npy, .npz or UTF-8 text"
        ) from None
    if encoding == "utf-16":
        return text, int(text.startswith("\ufeff"))
    del text  # checked; the bytes are decoded again a block at a time
    return data, 3 if data.startswith(codecs.BOM_UTF8) else 0


def _blocks(
    data: bytes, name: str, block_bytes: int = _BLOCK_BYTES
) -> Iterator[tuple[list[str], list[int]]]:
    """Data lines (not blank, not a ``#`` comment) and their 1-based line numbers, a block of
    about ``_BLOCK_BYTES`` at a time. CRLF, LF and a lone CR all end a line."""
    src, start = _checked_text(data, name)
    size = len(src)
    number = 0
    while True:
        cut = src.find(b"\n" if isinstance(src, bytes) else "\n", start + block_bytes)  # type: ignore[arg-type]
        end = size if cut < 0 else cut + 1  # blocks end after a newline: UTF-8 and CRLF stay whole
        piece = src[start:end]
        text = piece.decode("utf-8") if isinstance(piece, bytes) else piece
        raw = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if end < size:
            raw.pop()  # the empty string after the block's last newline: the next block's line
        lines: list[str] = []
        numbers: list[int] = []
        for line in raw:
            number += 1
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                lines.append(line)
                numbers.append(number)
        yield lines, numbers
        if end >= size:
            return
        start = end


def _sniff_delimiter(first: str) -> str | None:
    """The delimiter of the first line: tab, then ';', then ','; else runs of whitespace.

    ';' wins over ',' so that a European file with decimal commas is split on ';' and its
    decimal commas are then reported, not silently read as extra columns. The first line
    alone decides, so that a ragged row later is reported as ragged.
    """
    for delim in ("\t", ";", ","):
        if delim in first:
            return delim
    return None


def _split(
    lines: list[str], delimiter: str | None, name: str, numbers: list[int]
) -> list[list[str]]:
    """Cells of each line. Quotes are honoured within a line only: a number file has no
    multi-line quoted fields, and one row per line keeps the line numbers in messages right."""
    if delimiter is None:
        # whitespace-separated: no quoting rules beyond dropping quotes around a cell
        return [[c.strip("\"'") for c in line.split()] for line in lines]
    try:
        rows = list(csv.reader(lines, delimiter=delimiter, quotechar='"', strict=False))
    except csv.Error:
        rows = []
    if len(rows) != len(lines):
        # an unbalanced quote made csv join lines into one record: split line by line instead
        rows = []
        for line, number in zip(lines, numbers, strict=True):
            try:
                rows.append(next(csv.reader([line], delimiter=delimiter, strict=False), []))
            except csv.Error as exc:
                raise InputError(f"{name} line {number}: cannot split ({_short(exc)})") from None
    return [[c.strip().strip('"').strip() for c in row] for row in rows]


def _is_number(cell: str) -> bool:
    return _NUMBER.fullmatch(cell) is not None


@dataclass
class _Head:
    """What the first data lines decide: delimiter, header, width, and the notes about them."""

    name: str
    delimiter: str | None  # None: runs of whitespace
    header: list[str] | None = None
    header_line: int | None = None
    first_line: int = 0  # line of the first data row
    width: int = 0
    strip: bool = False  # every line ends with the delimiter: drop the empty last cell
    notes: list[str] = field(default_factory=list)


def _header_of(head: _Head, row: list[str], line: int) -> bool:
    """Take ``row`` as the header if a cell of it is a name, not a number."""
    if not any(_is_header_cell(c) for c in row):
        return False
    head.header, head.header_line = row, line
    shown = ", ".join(row[:6]) + (", ..." if len(row) > 6 else "")
    head.notes.append(f"{head.name} line {line} read as a header: {shown}")
    if row[0] == "" and len(row) > 1:
        head.notes.append(
            f"{head.name}: column 1 has no name in the header - a pandas index written by "
            "to_csv? It is read as a logit column (write with index=False)"
        )
    return True


def _first_row(head: _Head, row: list[str], line: int, strip: bool | None) -> None:
    """The first data row fixes the width; a delimiter at its end is assumed on every line
    (``strip``: None to decide so, False once a line without one was found)."""
    if strip is None:
        strip = head.delimiter is not None and len(row) > 1 and row[-1] == ""
    head.strip = strip
    head.first_line = line
    head.width = len(row) - 1 if strip else len(row)
    h = head.header
    if h is not None and len(h) == head.width + 1 and h[-1] == "":
        head.header = h[:-1]  # the header line ends with a delimiter too


class _Restart(Exception):
    """A line without the trailing delimiter the first row had: parse again without dropping."""


def _is_header_cell(cell: str) -> bool:
    """A name, not a number. A cell that starts like a number ('1_000', '1.2.3', '1,5') or is
    empty is bad data in a first data row, to be reported with its line and column."""
    return cell != "" and not _is_number(cell) and _NUMBER_START.match(cell) is None


def _column_label(head: _Head, col: int) -> str:
    if head.header is not None and col < len(head.header) and head.header[col]:
        return f"column {col + 1} ({head.header[col]!r})"
    return f"column {col + 1}"


def _parse_cells(cells: list[str], what: str, name: str) -> tuple[np.ndarray | None, int, int]:
    """``cells`` as float64, the count of overflowed cells, and the index of the first bad cell
    (-1: none; the values are then None).

    Fast path: Python's float() on every cell, plus one scan of all the characters for anything
    float() accepts but a number file should not hold ('_', non-ASCII digits). A failure falls
    back to a cell-by-cell scan for the first bad cell.
    """
    try:
        values = np.fromiter(map(float, cells), dtype=np.float64, count=len(cells))
        clean = _NUMBER_CHARS.search("\x1f".join(cells)) is None
    except ValueError:
        clean = False
    if not clean:
        for i, cell in enumerate(cells):
            if not _is_number(cell):
                return None, 0, i
        # not reached while _NUMBER and float() agree; still an InputError, never a crash
        raise InputError(f"{name}: cannot read the cells as numbers ({what})")
    # '1e400' is a finite number that float() turned into inf without a word: count those
    overflowed = sum("inf" not in cells[int(i)].lower() for i in np.flatnonzero(np.isinf(values)))
    return values, overflowed, -1


def _bad_cell(head: _Head, line: int, col: int, cell: str, what: str) -> InputError:
    where = f"{head.name} line {line}, {_column_label(head, col)}"
    if cell == "":
        return InputError(f"{where}: empty cell; expected a number ({what})")
    shown = cell if len(cell) <= 40 else cell[:37] + "..."
    if _DECIMAL_COMMA.fullmatch(cell):
        return InputError(
            f"{where}: {shown!r} uses a decimal comma, which is not supported; write numbers "
            "with a '.' decimal point (e.g. 1.5)"
        )
    return InputError(f"{where}: {shown!r} is not a number; expected {what}")


def _resolve_label_column(table: _Head, label_column: str | int, width: int) -> int:
    """A header name (exact), else a 0-based index (negative from the end) - as a column index."""
    by_name = isinstance(label_column, str) and (
        not _is_int_text(label_column)
        or (table.header is not None and label_column in table.header)
    )
    if isinstance(label_column, str) and by_name:
        if table.header is None:
            raise InputError(
                f"{table.name}: label column {label_column!r} is given by name but the file has "
                "no header row (its first line is numeric); give a 0-based column index"
            )
        matches = [i for i, h in enumerate(table.header) if h == label_column]
        if not matches:
            names = ", ".join(repr(h) for h in table.header[:20])
            raise InputError(
                f"{table.name}: no column named {label_column!r} in the header (line "
                f"{table.header_line}); columns are: {names}"
            )
        if len(matches) > 1:
            raise InputError(
                f"{table.name}: {len(matches)} columns are named {label_column!r}; give a "
                "0-based column index"
            )
        return matches[0]
    index = int(label_column)
    col = index + width if index < 0 else index
    if not 0 <= col < width:
        raise InputError(
            f"{table.name}: label column {index} is out of range for {width} columns "
            f"(0-based: 0..{width - 1}, or negative from the end)"
        )
    return col


def _label_named_column(head: _Head) -> InputError | None:
    """The refusal of a header that names a label column when no label column was given.

    Refused rather than taken as the labels: a file's labels should come from an explicit
    flag (the same file then gives the same numbers with or without a header), and a note
    beside a pass verdict is easy to miss in a CI log.
    """
    assert head.header is not None
    for col, cell in enumerate(head.header):
        if cell.strip().lower() in LABEL_NAMES:
            return InputError(
                f"{head.name} line {head.header_line}: column {col + 1} is named {cell!r} and "
                f"would be read as a logit; did you mean --label-column {cell}? (rename the "
                "column if it does hold logits)"
            )
    return None


def _is_int_text(s: str) -> bool:
    return re.fullmatch(r"\s*[+-]?\d+\s*", s) is not None


@dataclass
class _TextLogits:
    logits: np.ndarray
    overflowed: int
    label_values: np.ndarray | None
    label_where: str | None
    lines: _LineMap


class _Parser:
    """Rows fed a block at a time: checked, and their numbers parsed into preallocated arrays.

    Errors are kept, not raised, until every row is seen, then the one a whole-file parse
    would raise is: a ragged row, then the header's width, the label column, a bad label cell,
    a bad logit cell - each the first in file order.
    """

    def __init__(
        self,
        name: str,
        rows_at_most: int,
        label_column: str | int | None,
        one_column: bool,
        strip: bool | None,
        label_names: bool = True,
    ) -> None:
        self.name = name
        self.label_names = label_names  # refuse a column named like labels (logits files)
        self.rows_at_most = rows_at_most
        self.label_column = label_column
        self.one_column = one_column
        self.strip_rule = strip
        self.head: _Head | None = None
        self.header_pending = True
        self.lines = _LineMap()
        self.errors: dict[str, InputError] = {}  # by kind, the first of each
        self.overflowed = 0
        self.label_col: int | None = None
        self.columns: list[int] = []
        self.logits = np.empty((0, 0))
        self.labels: np.ndarray | None = None

    def feed(self, lines: list[str], numbers: list[int]) -> None:
        if not lines:
            return
        if self.head is None:
            self.head = _Head(self.name, _sniff_delimiter(lines[0]))
        rows = _split(lines, self.head.delimiter, self.name, numbers)
        if self.header_pending:
            self.header_pending = False
            if _header_of(self.head, rows[0], numbers[0]):
                rows, numbers = rows[1:], numbers[1:]
        if rows and self.head.width == 0:
            _first_row(self.head, rows[0], numbers[0], self.strip_rule)
            self._columns()
        if rows:
            self._rows(rows, numbers)

    def _columns(self) -> None:
        """The label and logit columns, once the width is known; allocate the outputs."""
        head = self.head
        assert head is not None
        if head.header is not None and len(head.header) != head.width:
            self.errors.setdefault(
                "header",
                InputError(
                    f"{self.name} line {head.header_line}: the header has {len(head.header)} "
                    f"names but the data rows have {head.width} cells"
                ),
            )
        columns = list(range(head.width))
        if self.label_names and self.label_column is None and not self.one_column and head.header:
            named = _label_named_column(head)
            if named is not None:
                self.errors.setdefault("columns", named)
        if self.one_column and head.width != 1:
            self.errors.setdefault(
                "columns",
                InputError(
                    f"{self.name} line {head.first_line}: has {head.width} cells; a labels file "
                    "holds one class index per line"
                ),
            )
        if self.label_column is not None:
            try:
                self.label_col = _resolve_label_column(head, self.label_column, head.width)
            except InputError as exc:
                self.errors.setdefault("columns", exc)
            else:
                columns.remove(self.label_col)
                if not columns:
                    self.errors.setdefault(
                        "columns",
                        InputError(
                            f"{self.name}: the label column is the only column; no logits are left"
                        ),
                    )
                self.labels = np.empty(self.rows_at_most)
        self.columns = columns
        self.logits = np.empty((self.rows_at_most, len(columns)))

    def _rows(self, rows: list[list[str]], numbers: list[int]) -> None:
        head = self.head
        assert head is not None
        if head.strip:
            for row in rows:
                if not row or row[-1] != "":
                    raise _Restart
            rows = [row[:-1] for row in rows]
        for row, line in zip(rows, numbers, strict=True):
            if len(row) != head.width and "ragged" not in self.errors:
                self.errors["ragged"] = InputError(
                    f"{self.name} line {line}: has {len(row)} cells, expected {head.width} "
                    f"(as on line {head.first_line})"
                )
        start = self.lines.count
        for line in numbers:
            self.lines.append(line)
        if self.errors.keys() & {"ragged", "header", "columns"}:
            return  # a structural error will be raised: the numbers no longer matter
        if self.label_col is not None and "label" not in self.errors:
            got = self._numbers(rows, numbers, [self.label_col], "a class index", "label")
            if got is not None:
                assert self.labels is not None
                self.labels[start : start + len(rows)] = got[0][:, 0]
        if "label" not in self.errors and "logit" not in self.errors:
            what = "a class index" if self.one_column else "a logit"
            got = self._numbers(rows, numbers, self.columns, what, "logit")
            if got is not None:
                self.logits[start : start + len(rows)] = got[0]
                self.overflowed += got[1]

    def _numbers(
        self, rows: list[list[str]], numbers: list[int], columns: list[int], what: str, kind: str
    ) -> tuple[np.ndarray, int] | None:
        assert self.head is not None
        width = len(columns)
        cells = [row[c] for row in rows for c in columns]
        values, overflowed, bad = _parse_cells(cells, what, self.name)
        if values is None:
            col = columns[bad % width]
            self.errors[kind] = _bad_cell(self.head, numbers[bad // width], col, cells[bad], what)
            return None
        return values.reshape(len(rows), width), overflowed

    def finish(self) -> _TextLogits:
        head = self.head
        if head is None:
            raise InputError(
                f"{self.name}: no data rows (the file is empty, blank or only comments)"
            )
        if head.width == 0:
            raise InputError(
                f"{self.name}: has a header (line {head.header_line}) but no data rows"
            )
        for kind in ("ragged", "header", "columns", "label", "logit"):
            if kind in self.errors:
                raise self.errors[kind]
        n = self.lines.count
        # drop the rows allocated for blank and comment lines, in place (no copy)
        self.logits.resize((n, len(self.columns)), refcheck=False)
        labels = None
        where = None
        if self.labels is not None and self.label_col is not None:
            self.labels.resize((n,), refcheck=False)
            labels = self.labels
            where = f"{self.name} {_column_label(head, self.label_col)}"
        return _TextLogits(self.logits, self.overflowed, labels, where, self.lines)


def _parse_text(
    data: bytes,
    name: str,
    label_column: str | int | None,
    one_column: bool,
    block_bytes: int = _BLOCK_BYTES,
    label_names: bool = True,
) -> tuple[_TextLogits, list[str]]:
    """Parse text in blocks; once more without dropping a trailing delimiter if a line lacks it."""
    strip: bool | None = None
    # each data row is a line, ended by LF, CRLF or a lone CR (an upper bound for UTF-16)
    rows_at_most = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n") + 1
    while True:
        parser = _Parser(name, rows_at_most, label_column, one_column, strip, label_names)
        try:
            for lines, numbers in _blocks(data, name, block_bytes):
                parser.feed(lines, numbers)
        except _Restart:
            strip = False
            continue
        got = parser.finish()
        assert parser.head is not None
        return got, parser.head.notes


def _text_logits(
    data: bytes,
    name: str,
    label_column: str | int | None,
    notes: list[str],
    block_bytes: int = _BLOCK_BYTES,
    label_names: bool = True,
) -> _TextLogits:
    """Logits (and a label column) from text; notes: the header, cells that overflowed.
    ``label_names``: refuse a header column named like labels (not for compare's value files,
    whose columns are no logits)."""
    got, head_notes = _parse_text(data, name, label_column, False, block_bytes, label_names)
    notes.extend(head_notes)
    if got.overflowed:
        notes.append(
            f"{name}: {got.overflowed} cell(s) overflowed float64 when parsed (e.g. 1e400) and "
            "were read as +-inf"
        )
    return got


def _text_labels(
    data: bytes, name: str, notes: list[str], block_bytes: int = _BLOCK_BYTES
) -> tuple[np.ndarray, _LineMap]:
    """A text labels file: one label per line; a non-numeric first line is a header."""
    got, head_notes = _parse_text(data, name, None, True, block_bytes)
    notes.extend(head_notes)
    return got.logits[:, 0], got.lines
