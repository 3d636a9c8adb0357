"""Delimited text (CSV, TSV, whitespace; a file, a pipe or stdin) parsed to float64."""

from __future__ import annotations

import codecs
import csv
import re
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


@dataclass
class _Table:
    """Cells of a delimited text file: data rows, their line numbers, and the header if any."""

    name: str
    rows: list[list[str]]
    lines: list[int]  # 1-based line number of each data row
    header: list[str] | None
    header_line: int | None
    delimiter: str | None  # None: runs of whitespace
    notes: list[str] = field(default_factory=list)


def _decode(data: bytes, name: str) -> str:
    """Text from bytes: UTF-8 (a BOM is dropped), or UTF-16 when it starts with its BOM
    (what Windows PowerShell's ``>`` writes)."""
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
    return text.removeprefix("\ufeff")  # a byte-order mark some editors write


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


def _read_table(data: bytes, name: str) -> _Table:
    """Split text into rows of cells, handling comments, blank lines, BOM, CRLF, a header row
    and a delimiter at the end of every line."""
    text = _decode(data, name)
    raw_lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines: list[str] = []
    numbers: list[int] = []
    for i, line in enumerate(raw_lines, 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            lines.append(line)
            numbers.append(i)
    if not lines:
        raise InputError(f"{name}: no data rows (the file is empty, blank or only comments)")
    delimiter = _sniff_delimiter(lines[0])
    rows = _split(lines, delimiter, name, numbers)
    notes: list[str] = []
    header: list[str] | None = None
    header_line: int | None = None
    if any(_is_header_cell(c) for c in rows[0]):
        header, header_line = rows[0], numbers[0]
        rows, numbers = rows[1:], numbers[1:]
        shown = ", ".join(header[:6]) + (", ..." if len(header) > 6 else "")
        notes.append(f"{name} line {header_line} read as a header: {shown}")
        if header[0] == "" and len(header) > 1:
            notes.append(
                f"{name}: column 1 has no name in the header - a pandas index written by "
                "to_csv? It is read as a logit column (write with index=False)"
            )
    if not rows:
        raise InputError(f"{name}: has a header (line {header_line}) but no data rows")
    if delimiter is not None and all(row and row[-1] == "" for row in rows) and len(rows[0]) > 1:
        rows = [row[:-1] for row in rows]  # a delimiter at the end of every line
    if header is not None and len(header) == len(rows[0]) + 1 and header[-1] == "":
        header = header[:-1]  # the header line ends with a delimiter too
    return _Table(name, rows, numbers, header, header_line, delimiter, notes)


def _is_header_cell(cell: str) -> bool:
    """A name, not a number. A cell that starts like a number ('1_000', '1.2.3', '1,5') or is
    empty is bad data in a first data row, to be reported with its line and column."""
    return cell != "" and not _is_number(cell) and _NUMBER_START.match(cell) is None


def _check_rectangular(table: _Table) -> int:
    width = len(table.rows[0])
    for row, line in zip(table.rows, table.lines, strict=True):
        if len(row) != width:
            raise InputError(
                f"{table.name} line {line}: has {len(row)} cells, expected {width} "
                f"(as on line {table.lines[0]})"
            )
    if table.header is not None and len(table.header) != width:
        raise InputError(
            f"{table.name} line {table.header_line}: the header has {len(table.header)} names "
            f"but the data rows have {width} cells"
        )
    return width


def _column_label(table: _Table, col: int) -> str:
    if table.header is not None and col < len(table.header) and table.header[col]:
        return f"column {col + 1} ({table.header[col]!r})"
    return f"column {col + 1}"


def _parse_numbers(table: _Table, columns: list[int], what: str) -> tuple[np.ndarray, int]:
    """The cells of ``columns`` as a float64 (rows, len(columns)) array; counts overflowed cells.

    Fast path: Python's float() on every cell, plus one scan of all the characters for anything
    float() accepts but a number file should not hold ('_', non-ASCII digits). A failure falls
    back to a cell-by-cell scan that names the first bad line and column.
    """
    n = len(table.rows)
    width = len(columns)
    cells = [row[c] for row in table.rows for c in columns]
    try:
        values = np.fromiter(map(float, cells), dtype=np.float64, count=len(cells))
        clean = _NUMBER_CHARS.search("\x1f".join(cells)) is None
    except ValueError:
        clean = False
        values = np.empty(0)
    if not clean:
        for i, cell in enumerate(cells):
            if not _is_number(cell):
                _bad_cell(table, i // width, columns[i % width], cell, what)
        # not reached while _NUMBER and float() agree; still an InputError, never a crash
        raise InputError(f"{table.name}: cannot read the cells as numbers ({what})")
    # '1e400' is a finite number that float() turned into inf without a word: count those
    overflowed = sum("inf" not in cells[int(i)].lower() for i in np.flatnonzero(np.isinf(values)))
    return values.reshape(n, width), overflowed


def _bad_cell(table: _Table, row: int, col: int, cell: str, what: str) -> None:
    where = f"{table.name} line {table.lines[row]}, {_column_label(table, col)}"
    if cell == "":
        raise InputError(f"{where}: empty cell; expected a number ({what})")
    shown = cell if len(cell) <= 40 else cell[:37] + "..."
    if _DECIMAL_COMMA.fullmatch(cell):
        raise InputError(
            f"{where}: {shown!r} uses a decimal comma, which is not supported; write numbers "
            "with a '.' decimal point (e.g. 1.5)"
        )
    raise InputError(f"{where}: {shown!r} is not a number; expected {what}")


def _resolve_label_column(table: _Table, label_column: str | int, width: int) -> int:
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


def _is_int_text(s: str) -> bool:
    return re.fullmatch(r"\s*[+-]?\d+\s*", s) is not None


@dataclass
class _TextLogits:
    logits: np.ndarray
    overflowed: int
    label_values: np.ndarray | None
    label_where: str | None
    lines: list[int]


def _text_logits(
    data: bytes, name: str, label_column: str | int | None, notes: list[str]
) -> _TextLogits:
    table = _read_table(data, name)
    notes.extend(table.notes)
    width = _check_rectangular(table)
    columns = list(range(width))
    label_values: np.ndarray | None = None
    label_where: str | None = None
    overflowed = 0
    if label_column is not None:
        col = _resolve_label_column(table, label_column, width)
        label_values, _ = _parse_numbers(table, [col], "a class index")
        label_values = label_values[:, 0]
        label_where = f"{name} {_column_label(table, col)}"
        columns.remove(col)
        if not columns:
            raise InputError(f"{name}: the label column is the only column; no logits are left")
    logits, over = _parse_numbers(table, columns, "a logit")
    overflowed += over
    if overflowed:
        notes.append(
            f"{name}: {overflowed} cell(s) overflowed float64 when parsed (e.g. 1e400) and were "
            "read as +-inf"
        )
    return _TextLogits(logits, overflowed, label_values, label_where, table.lines)


def _text_labels(data: bytes, name: str, notes: list[str]) -> tuple[np.ndarray, list[int]]:
    """A text labels file: one label per line; a non-numeric first line is a header."""
    table = _read_table(data, name)
    notes.extend(table.notes)
    width = _check_rectangular(table)
    if width != 1:
        raise InputError(
            f"{name} line {table.lines[0]}: has {width} cells; a labels file holds one class "
            "index per line"
        )
    values, _ = _parse_numbers(table, [0], "a class index")
    return values[:, 0], table.lines
