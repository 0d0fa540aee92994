"""Reading a delimited table in one streaming pass: hashed as read, numeric columns parsed chunk by chunk.

The whole file is never held as bytes, text or a list of rows: rows are read in chunks, each wanted
column of a chunk is parsed to float64 at once (8 bytes a cell, about what the text took), and only
columns that are not clean numbers (text, gaps, NaN) keep their cells as strings for the column
parsers' messages. A column that turns out not to be clean after its first chunk is read again in a
second pass (checked to be the same bytes by its SHA-256).
"""

from __future__ import annotations

import array
import codecs
import csv
import hashlib
import io
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ntk_studio.safe_io import check_sha256, open_regular, sha256_file

from ..errors import DataLoadError
from ._common import MAX_DATA_FILE_BYTES, MAX_LISTED, check_data_path, listing

SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".txt")
KIND = "table (CSV/TSV)"
# Delimiters the sniffer may choose from; anything else in a header is more likely data.
SNIFF_CANDIDATES = ",\t;| "
# The sniffer only needs a sample; the whole file would make its regexes slow.
SNIFF_CHARS = 64 * 1024
CHUNK_ROWS = 65_536  # rows parsed at once: bounds the Python strings alive at any time
READ_BYTES = 1024 * 1024

# plan(header, delimiter) -> (columns to read, of which those to keep as text); raises for bad names.
Plan = Callable[[list[str], str], tuple[list[str], list[str]]]


@dataclass
class TableScan:
    """What one pass over a table gave: its header, numeric and text columns, file lines, notes, SHA-256."""

    header: list[str]
    delimiter: str
    numbers: dict[str, np.ndarray]  # clean float64 columns
    text: dict[str, list[str]]  # columns kept as their cells
    lines: array.array  # the file line of each data row
    notes: list[str] = field(default_factory=list)
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.lines)


class _HashingReader(io.RawIOBase):
    """Reads the file, hashing every byte, refusing NUL bytes in 8-bit text."""

    def __init__(self, fh, name: str, allow_nul: bool) -> None:
        super().__init__()
        self.fh, self.name, self.allow_nul = fh, name, allow_nul
        self.digest = hashlib.sha256()
        self.count = 0
        self.has_content = False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.fh.close()
        super().close()

    def readinto(self, buffer) -> int:
        data = self.fh.read(min(len(buffer), READ_BYTES))
        if not self.allow_nul and b"\x00" in data:
            raise DataLoadError(
                f"{self.name!r} contains NUL bytes, so it is a binary file, not delimited text. "
                "Export the data as CSV (UTF-8), or save arrays as .npz/.npy."
            )
        self.digest.update(data)
        self.count += len(data)
        self.has_content = self.has_content or bool(data.strip())
        buffer[: len(data)] = data
        return len(data)


def _text_stream(path: Path) -> tuple[io.TextIOWrapper, _HashingReader]:
    """Return (decoded text stream, the hashing reader under it) for a table file."""
    check_data_path(path, SUPPORTED_EXTENSIONS, KIND)
    fh = open_regular(path, DataLoadError, f"{KIND} file", MAX_DATA_FILE_BYTES)
    try:
        start = fh.read(4)
        fh.seek(0)
    except OSError as exc:
        fh.close()
        raise DataLoadError(f"Could not read {str(path)!r} ({exc.strerror or exc}).") from None
    # Excel's "Unicode text" export is UTF-16 with a BOM; it is text, not binary garbage.
    utf16 = start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    raw = _HashingReader(fh, path.name, allow_nul=utf16)
    text = io.TextIOWrapper(io.BufferedReader(raw, READ_BYTES), encoding="utf-16" if utf16 else "utf-8-sig",
                            errors="strict", newline="")
    return text, raw


def _decode_error(name: str, raw: _HashingReader, utf16: bool) -> DataLoadError:
    if utf16:
        return DataLoadError(f"{name!r} starts like UTF-16 text but is not valid UTF-16. Re-save it as 'CSV UTF-8'.")
    return DataLoadError(
        f"{name!r} is not UTF-8 text (an undecodable byte within the first {raw.count:,} bytes). If it came "
        "from a spreadsheet, save it as 'CSV UTF-8'; if it is binary data, use .npz/.npy."
    )


def pick_delimiter(text: str, suffix: str, delimiter: str | None) -> str:
    """Return the delimiter: the one given, tab for .tsv, else a comma or the sniffed one."""
    if delimiter is not None:
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n":
            raise DataLoadError(
                f"delimiter must be a single character such as ',' or '\\t', got {delimiter!r}."
            )
        return delimiter
    if suffix == ".tsv":
        return "\t"
    header = next((line for line in text[:SNIFF_CHARS].splitlines() if line.strip()), "")
    if suffix == ".csv" and "," in header:
        return ","
    try:
        sniffed = csv.Sniffer().sniff(text[:SNIFF_CHARS], delimiters=SNIFF_CANDIDATES).delimiter
    except csv.Error:
        sniffed = ""
    if sniffed and sniffed in SNIFF_CANDIDATES:
        return sniffed
    # The sniffer gives up on one-column or irregular files; fall back to what the header shows.
    return next((c for c in SNIFF_CANDIDATES if c in header), ",")


def _clean_numbers(cells: list[str]) -> np.ndarray | None:
    """Return the cells as float64 when every one is a finite number, else None (numpy parses at C speed)."""
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        return None
    return values if np.isfinite(values).all() else None


class _Pass:
    """One pass over the file's data rows, collecting the planned columns."""

    def __init__(self, header: list[str], columns: list[str], text_columns: set[str]) -> None:
        self.index = {name: header.index(name) for name in dict.fromkeys([*columns, *text_columns])}
        self.width = len(header)
        self.numbers: dict[str, list[np.ndarray]] = {n: [] for n in columns if n not in text_columns}
        self.text: dict[str, list[str]] = {n: [] for n in text_columns}
        self.late_text: set[str] = set()  # numeric in an earlier chunk, not in a later one: read again
        self.lines = array.array("q")
        self.ragged: list[tuple[int, int]] = []
        self.n_ragged = 0
        self.trailing_empty = True  # every row ends in an empty cell (an exporter's trailing delimiter)
        self.chunks = 0

    def add(self, chunk: list[list[str]], chunk_lines: list[int]) -> None:
        for line, row in zip(chunk_lines, chunk):
            if len(row) != self.width:
                self.n_ragged += 1
                if len(self.ragged) < MAX_LISTED:
                    self.ragged.append((line, len(row)))
            elif row[-1].strip():
                self.trailing_empty = False
        if self.n_ragged:
            return  # the load fails; keep counting, stop collecting
        self.lines.extend(chunk_lines)
        for name, i in self.index.items():
            cells = [r[i] for r in chunk]
            if name in self.text:
                self.text[name].extend(cells)
                continue
            values = _clean_numbers(cells)
            if values is not None:
                self.numbers[name].append(values)
                continue
            if self.chunks:
                self.late_text.add(name)
            del self.numbers[name]
            self.text[name] = cells
        self.chunks += 1


def _rows(text: io.TextIOWrapper, raw: _HashingReader, name: str, utf16: bool) -> tuple[str, Iterator[str]]:
    """Return (a sample of the first lines for sniffing, an iterator over every line)."""
    sample: list[str] = []
    size = 0
    try:
        while size < SNIFF_CHARS:
            line = text.readline()
            if not line:
                break
            sample.append(line)
            size += len(line)
    except UnicodeDecodeError:
        raise _decode_error(name, raw, utf16) from None
    return "".join(sample), itertools.chain(sample, text)


def _read_pass(path: Path, delimiter: str | None, plan: Plan | None, text_columns: set[str] | None,
               min_rows: int) -> tuple[TableScan, _Pass]:
    text, raw = _text_stream(path)
    utf16 = raw.allow_nul
    name = path.name
    with text:
        sample, lines_in = _rows(text, raw, name, utf16)
        delim = pick_delimiter(sample, path.suffix.lower(), delimiter)
        # Space-delimited files (numpy.savetxt) often align columns with runs of spaces.
        reader = csv.reader(lines_in, delimiter=delim, skipinitialspace=delim == " ")
        header: list[str] | None = None
        blank = 0
        collector: _Pass | None = None
        chunk: list[list[str]] = []
        chunk_lines: list[int] = []
        try:
            for row in reader:
                # Cells stay unstripped here (stripping millions of numbers is slow); the column
                # parsers strip whatever they do not parse directly.
                if not any(c.strip() for c in row):
                    blank += 1
                    continue
                if header is None:
                    header = [h.strip() for h in row]
                    columns, kept = _planned(header, delim, name, plan)
                    collector = _Pass(header, columns, set(kept) | (text_columns or set()))
                    continue
                chunk.append(row)
                chunk_lines.append(reader.line_num)
                if len(chunk) >= CHUNK_ROWS:
                    collector.add(chunk, chunk_lines)
                    chunk, chunk_lines = [], []
        except csv.Error as exc:
            raise DataLoadError(
                f"{name!r} could not be parsed as delimited text near line {reader.line_num}: {exc}. "
                "Check for unbalanced quotes, or that this really is a CSV/TSV file."
            ) from exc
        except UnicodeDecodeError:
            raise _decode_error(name, raw, utf16) from None
        if collector is not None and chunk:
            collector.add(chunk, chunk_lines)
    if header is None:
        if not raw.has_content:
            raise DataLoadError(f"{name!r} is empty. Choose a {KIND} file that contains data.")
        raise DataLoadError(f"{name!r} has no rows. Choose a file with a header row and data.")
    n = len(collector.lines)
    full_header = header
    notes = [f"delimiter {delim!r}"]
    if blank:
        notes.append(f"skipped {blank} blank line(s)")
    if _trailing(header):
        if collector.trailing_empty and not collector.n_ragged:
            header = header[:-1]
            notes.append("dropped an empty trailing column")
        else:
            raise _unnamed(name, [len(header)])
    if collector.n_ragged:
        shown = ", ".join(f"line {ln} has {k}" for ln, k in collector.ragged[:MAX_LISTED])
        if collector.n_ragged > MAX_LISTED:
            shown += f" and {collector.n_ragged - MAX_LISTED} more"
        raise DataLoadError(
            f"{name!r}: the header has {len(full_header)} fields (delimiter {delim!r}) but {shown}. "
            "Fix those rows, or pass the right delimiter."
        )
    if n < min_rows:
        what = "a header but no data rows" if not n else "only one data row"
        raise DataLoadError(
            f"{name!r} has {what}; at least {min_rows} row{'s are' if min_rows > 1 else ' is'} needed. "
            "Add data below the header."
        )
    notes.insert(0, f"read {n} rows x {len(header)} columns")
    numbers = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in collector.numbers.items()}
    scan = TableScan(header, delim, numbers, collector.text, collector.lines, notes, raw.digest.hexdigest())
    return scan, collector


def _trailing(header: list[str]) -> bool:
    return len(header) > 1 and header[-1] == ""


def _unnamed(name: str, columns: list[int]) -> DataLoadError:
    return DataLoadError(
        f"{name!r}: column(s) {listing(columns)} have no name in the header row. Give every "
        "column a name (a pandas index saved with index=True looks like this; save with "
        "index=False or name the column)."
    )


def _planned(header: list[str], delim: str, name: str, plan: Plan | None) -> tuple[list[str], list[str]]:
    """Check the header's names; return the plan's (columns, text columns) for it."""
    named = header[:-1] if _trailing(header) else header
    unnamed = [i + 1 for i, h in enumerate(named) if not h]
    if unnamed:
        raise _unnamed(name, unnamed)
    duplicated = sorted({h for h in named if named.count(h) > 1})
    if duplicated:
        raise DataLoadError(
            f"{name!r}: the header names {listing(repr(d) for d in duplicated)} more than once. "
            "Rename the columns so that every name is unique."
        )
    if plan is None:
        return list(named), list(named)
    columns, text = plan(list(named), delim)
    return list(dict.fromkeys(columns)), list(text)


def scan_table(path: str | Path, delimiter: str | None, plan: Plan | None, min_rows: int,
               expected_sha256: str | None = None) -> TableScan:
    """Return the planned columns of the table at ``path``, read in a streaming pass (two, when needed).

    With ``expected_sha256`` the streamed bytes' hash must match it (DataLoadError naming the file
    otherwise); a file that fails to parse and also hashes otherwise is reported as changed.
    """
    p = Path(path)
    try:
        scan, collector = _read_pass(p, delimiter, plan, None, min_rows)
    except DataLoadError:
        if expected_sha256 is not None:
            check_sha256(sha256_file(p, DataLoadError, "data file"), expected_sha256, p, DataLoadError, "data file")
        raise
    check_sha256(scan.sha256, expected_sha256, p, DataLoadError, "data file")
    if collector.late_text:
        again, _ = _read_pass(p, delimiter, plan, set(collector.late_text), min_rows)
        if again.sha256 != scan.sha256:
            raise DataLoadError(f"{p.name!r} changed while it was being read. Load it again once it is saved.")
        for name in collector.late_text:
            scan.text[name] = again.text[name]
    return scan
