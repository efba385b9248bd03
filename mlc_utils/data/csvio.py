"""Read and write the competition CSVs exactly, quirks included.

The competition files are not valid CSV: captions are wrapped in quotes but inner quotes are not
escaped (``"reads "spray.""``), captions may hold raw newlines and blank lines, and some end in
``/`` (which breaks the usual ``escapechar="/"`` work-around). ``pandas.read_csv`` therefore loses
or merges rows. This module splits the file into records by *record-start lines* (a line that
begins with an image file name and a comma), so one record is one row, always; anything it
cannot read is reported with file, line and content, never dropped.

It also reads well-formed CSV as pandas writes it (``""`` escapes, unquoted plain fields); the
dialect is detected per file (see :func:`detect_dialect`) or forced with ``dialect=``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from mlc_utils.core.io import atomic_write_text
from mlc_utils.data.labels import LabelSpace

TRAIN_COLUMNS = ("ImageID", "Labels", "Caption")
TEST_COLUMNS = ("ImageID", "Caption")
IMAGE_ID = r'[^,"\s]+\.(?:jpe?g|png|bmp|gif|webp|tiff?)'
_RECORD_START = re.compile(rf"^({IMAGE_ID}),", re.IGNORECASE)
_TRAIN_FIELDS = re.compile(rf"^({IMAGE_ID}),([^,\"]*),(.*)$", re.IGNORECASE | re.DOTALL)
_TEST_FIELDS = re.compile(rf"^({IMAGE_ID}),(.*)$", re.IGNORECASE | re.DOTALL)
DIALECTS = ("auto", "competition", "pandas")


@dataclass(frozen=True)
class CsvProblem:
    path: str
    line: int
    message: str
    content: str = ""

    def __str__(self) -> str:
        shown = self.content if len(self.content) <= 120 else self.content[:117] + "..."
        return f"{self.path}:{self.line}: {self.message}" + (f": {shown!r}" if self.content else "")


class CsvFormatError(ValueError):
    """Raised with *every* problem found in a file, so a user fixes them in one pass."""

    def __init__(self, problems: Sequence[CsvProblem], limit: int = 25):
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more problems")
        super().__init__(f"{len(self.problems)} problem(s) reading CSV:\n" + "\n".join(lines))


@dataclass
class _Record:
    line: int
    text: str


def _physical_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise CsvFormatError([CsvProblem(str(path), line, f"not UTF-8 text ({err.reason})",
                                         raw[max(0, err.start - 30): err.end + 30].decode("utf-8", "replace"))])
    lines = text.split("\n")
    if lines and lines[0].endswith("\r"):  # a CRLF file: strip the CR of each line ending only
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    while lines and lines[-1] == "":  # what follows the final newline carries no data
        lines.pop()
    return lines


def _split_records(path: Path, lines: list[str], problems: list[CsvProblem]) -> list[_Record]:
    """Group physical lines (after the header) into records: each record starts on a record-start line."""
    records: list[_Record] = []
    for number, line in enumerate(lines[1:], start=2):
        if _RECORD_START.match(line):
            records.append(_Record(number, line))
        elif records:
            records[-1].text += "\n" + line
        else:
            problems.append(CsvProblem(str(path), number, "line does not start a record (expected an image file name, "
                                                          "e.g. '123.jpg,')", line))
    return records


def _merge_quoted_continuations(records: list[_Record], fields_re: re.Pattern, limit: int = 50) -> list[_Record]:
    """Re-join a pandas-quoted caption that holds a line looking like a record start (``"a\n12.jpg,b"``).

    Only a record whose quoted caption is never closed is joined, and only when the joined caption
    is a valid CSV field (every inner quote doubled); anything else stays as it was and is reported.
    """
    out, i = [], 0
    while i < len(records):
        record = records[i]
        match = fields_re.match(record.text)
        caption = match.group(match.lastindex) if match else ""
        if caption.startswith('"') and not _closes_as_csv_field(caption):
            text = record.text
            for j in range(i + 1, min(len(records), i + 1 + limit)):
                text += "\n" + records[j].text
                joined = fields_re.match(text)
                _, inner = _caption_field(joined.group(joined.lastindex)) if joined else (False, None)
                if inner is not None and '"' not in inner.replace('""', ""):
                    record, i = _Record(record.line, text), j
                    break
        out.append(record)
        i += 1
    return out


def _closes_as_csv_field(raw: str) -> bool:
    """True when a field that opens with a quote also closes, RFC 4180 style, at its very end.

    Three quotes and a letter a (quote, a, quote, quote, quote) close: an escaped quote, then the
    closing one. Three quotes alone do not: an opening quote and an escaped one, so pandas went on
    with the field on the next line.
    """
    i = 1
    while i < len(raw):
        if raw[i] == '"':
            if raw[i + 1: i + 2] == '"':
                i += 2
                continue
            return i == len(raw) - 1
        i += 1
    return False


def _caption_field(raw: str) -> tuple[bool, str]:
    """(quoted?, text between the outer quotes or the raw field)."""
    if raw.startswith('"'):
        return True, raw[1:-1] if len(raw) >= 2 and raw.endswith('"') else None
    return False, raw


def _needs_quotes(text: str) -> bool:
    return any(ch in text for ch in ',"\n\r')


def detect_dialect(quoted_inners: Iterable[str], any_unquoted: bool) -> str:
    """Competition if any quoted caption shows a lone quote or needed no quotes; else pandas.

    pandas (QUOTE_MINIMAL) quotes only fields that hold ``, " \\n \\r`` and doubles inner quotes;
    the competition files quote every caption and never escape. A file with no quoted caption at all
    reads the same either way.
    """
    for inner in quoted_inners:
        if '"' in inner.replace('""', "") or not _needs_quotes(inner.replace('""', '"')):
            return "competition"
    return "pandas"


def _parsed_dialect(parsed: list) -> str:
    """:func:`detect_dialect` of parsed records (line, image_id, labels, quoted, inner)."""
    return detect_dialect((p[4] for p in parsed if p[3]), any(not p[3] for p in parsed))


def _oddities(parsed: list) -> int:
    """Readings that neither dialect writes: an unquoted caption holding a quote (the competition
    quotes every caption, pandas every caption with a quote) and an ImageID seen before."""
    ids = [p[1] for p in parsed]
    return sum(1 for p in parsed if not p[3] and '"' in p[4]) + len(ids) - len(set(ids))


def read_competition_csv(path: str | os.PathLike, kind: str | None = None,
                         label_space: LabelSpace | None = None, dialect: str = "auto") -> pd.DataFrame:
    """Read ``train.csv`` or ``test.csv`` into one row per record.

    Returns columns ``ImageID``, ``Labels`` (train only: list of ints, file order kept),
    ``Caption`` (verbatim) and ``line`` (the record's first line in the file, for later messages).
    ``df.attrs`` holds ``kind``, ``dialect`` and ``path``. Raises :class:`CsvFormatError` listing
    every problem: unreadable records, duplicate ImageIDs, labels outside the space, missing columns.
    """
    frame, problems = read_with_problems(path, kind, label_space, dialect)
    if problems:
        raise CsvFormatError(problems)
    return frame


def read_with_problems(path: str | os.PathLike, kind: str | None = None, label_space: LabelSpace | None = None,
                       dialect: str = "auto") -> tuple[pd.DataFrame, list[CsvProblem]]:
    """Like :func:`read_competition_csv` but returns the readable rows *and* the problems (for
    ``validate``, which checks the images of every row it could read). Header problems still raise."""
    path = Path(path)
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file")
    label_space = label_space or LabelSpace()
    lines = _physical_lines(path)
    if not lines:
        raise CsvFormatError([CsvProblem(str(path), 1, "file is empty (expected a header line)")])
    header = tuple(h.strip() for h in lines[0].split(","))
    if kind is None:
        kind = "train" if "Labels" in header else "test"
    if kind not in ("train", "test"):
        raise ValueError(f"kind must be 'train' or 'test', got {kind!r}")
    expected = TRAIN_COLUMNS if kind == "train" else TEST_COLUMNS
    if header != expected:
        missing = [c for c in expected if c not in header]
        extra = [c for c in header if c not in expected]
        what = "; ".join(filter(None, [missing and f"missing column(s) {', '.join(missing)}",
                                       extra and f"unexpected column(s) {', '.join(extra)}"])) or "columns out of order"
        raise CsvFormatError([CsvProblem(str(path), 1, f"bad header for a {kind} file ({what}); "
                                                       f"expected {','.join(expected)}", lines[0])])

    problems: list[CsvProblem] = []
    fields_re = _TRAIN_FIELDS if kind == "train" else _TEST_FIELDS
    records = _split_records(path, lines, problems)
    # the competition dialect never escapes, so a record-start line always starts a record; re-joining
    # quoted continuations is for pandas' files, and "auto" tries the file as written first
    parsed, bad = _parse_records(path, records, fields_re, kind, expected)
    if dialect != "competition":
        odd = _oddities(parsed)
        pandas_like = dialect == "pandas" or bool(bad) or _parsed_dialect(parsed) == "pandas"
        if pandas_like or odd:  # as written, a caption is unclosed, quoted as pandas quotes, or odd
            merged, merged_bad = _parse_records(path, _merge_quoted_continuations(records, fields_re), fields_re,
                                                kind, expected)
            if pandas_like or len(merged_bad) + _oddities(merged) < odd:
                parsed, bad = merged, merged_bad
    problems += bad

    if dialect == "auto":
        dialect = _parsed_dialect(parsed)
    rows, seen = [], {}
    for line, image_id, labels_text, quoted, inner in parsed:
        caption = inner.replace('""', '"') if (quoted and dialect == "pandas") else inner
        if image_id in seen:
            problems.append(CsvProblem(str(path), line, f"duplicate ImageID {image_id} (first on line {seen[image_id]})",
                                       image_id))
            continue
        seen[image_id] = line
        row = {"ImageID": image_id}
        if kind == "train":
            try:
                labels = label_space.parse(labels_text)
            except ValueError as err:
                problems.append(CsvProblem(str(path), line, f"bad Labels for {image_id}: {err}", labels_text))
                continue
            if not labels:
                problems.append(CsvProblem(str(path), line, f"{image_id} has no labels", labels_text))
                continue
            row["Labels"] = labels
        if not caption.strip():
            problems.append(CsvProblem(str(path), line, f"{image_id} has an empty caption", caption))
            continue
        row["Caption"] = caption
        row["line"] = line
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*expected, "line"])
    frame.attrs.update(kind=kind, dialect=dialect, path=str(path))
    return frame, problems


def _parse_records(path: Path, records: list[_Record], fields_re: re.Pattern, kind: str, expected) -> tuple[list, list]:
    """Each record's fields as (line, image_id, labels_text, quoted, inner), and the records that have none."""
    parsed, problems = [], []
    for record in records:
        match = fields_re.match(record.text)
        if not match:
            problems.append(CsvProblem(str(path), record.line, f"record does not have the fields {','.join(expected)}",
                                       record.text))
            continue
        image_id, labels_text, caption_raw = (match.group(1), match.group(2), match.group(3)) if kind == "train" \
            else (match.group(1), None, match.group(2))
        quoted, inner = _caption_field(caption_raw)
        if inner is None:
            problems.append(CsvProblem(str(path), record.line, "caption opens a quote that is never closed "
                                                               f"(record spans {record.text.count(chr(10)) + 1} line(s))",
                                       record.text))
            continue
        parsed.append((record.line, image_id, labels_text, quoted, inner))
    return parsed, problems


def read_train_csv(path, label_space: LabelSpace | None = None, dialect: str = "auto") -> pd.DataFrame:
    return read_competition_csv(path, "train", label_space, dialect)


def read_test_csv(path, dialect: str = "auto") -> pd.DataFrame:
    return read_competition_csv(path, "test", None, dialect)


def check_caption_writable(caption: str) -> None:
    """The competition dialect cannot hold every string: refuse those it would read back differently."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {type(caption).__name__}")
    if not caption.strip():
        raise ValueError("caption is empty")
    for part in caption.split("\n")[1:]:
        if _RECORD_START.match(part):
            raise ValueError(f"caption line {part!r} would read back as a new record")


def format_competition_csv(frame: pd.DataFrame) -> str:
    """The competition dialect: every caption quoted, nothing escaped, LF line endings."""
    kind = "train" if "Labels" in frame.columns else "test"
    columns = TRAIN_COLUMNS if kind == "train" else TEST_COLUMNS
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing} for a {kind} CSV")
    out = [",".join(columns)]
    for index, row in enumerate(frame.itertuples(index=False)):
        record = row._asdict()
        caption = record["Caption"]
        try:
            check_caption_writable(caption)
        except (ValueError, TypeError) as err:
            raise ValueError(f"row {index} ({record['ImageID']}): {err}") from None
        if not _RECORD_START.match(f"{record['ImageID']},"):
            raise ValueError(f"row {index}: ImageID {record['ImageID']!r} is not an image file name")
        fields = [str(record["ImageID"])]
        if kind == "train":
            labels = record["Labels"]
            fields.append(labels if isinstance(labels, str) else LabelSpace.format(labels))
        fields.append(f'"{caption}"')
        out.append(",".join(fields))
    return "\n".join(out) + "\n"


def write_competition_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` in the competition dialect, atomically (readers never see half a file)."""
    return atomic_write_text(path, format_competition_csv(frame))
