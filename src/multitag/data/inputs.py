"""One input resolver for every command that takes photos.

Files, folders, folder-per-class trees and manifests (CSV, TSV, Parquet, JSON Lines) in;
a frame ``id``, ``path`` (+ label columns) and the list of inputs left out, each with its
reason, out. Only regular files become rows: FIFOs, sockets and devices are reported, never
opened, so a named pipe called ``x.jpg`` cannot hang a run. Every input that is not used is
reported (:class:`Skipped`), unsupported photo formats by name (HEIC, RAW, ...).

Ids: a manifest's id column (else its path cell); an image file's stem, except where two
different files share a stem: those get their path inside the folder given (else their path)
as id, never a silent drop. A folder-per-class tree (a folder whose images all sit in
sub-folders) also gives a ``label`` column: each image's top sub-folder.
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from multitag.data.images import IMAGE_EXTENSIONS, walk_files

__all__ = [
    "FOLDER_TASK",
    "MANIFEST_SUFFIXES",
    "PATH_COLUMNS",
    "Inputs",
    "Skipped",
    "read_table",
    "resolve_inputs",
]

FOLDER_TASK = "label"
"""The label column of a folder-per-class tree."""

MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".jsonl")
"""Lower-case suffixes read as manifests (``.txt`` as CSV)."""

PATH_COLUMNS = ("path", "filepath", "file")
"""Column names taken as the image path, in this order, when ``path_col`` is not given."""

_UNSUPPORTED = {
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".jxl": "JPEG XL",
    ".svg": "SVG (vector)",
    ".pdf": "PDF",
    ".psd": "Photoshop",
    **{s: "camera RAW" for s in (".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf")},
}
_SNIFF = (",", ";", "\t", "|")
_SUPPORTED = ", ".join(sorted(IMAGE_EXTENSIONS))


@dataclass(frozen=True)
class Skipped:
    """An input left out: ``path`` (as given), ``reason`` (what is wrong, what to do), ``kind``
    (``missing``, ``unreadable``, ``not-regular``, ``unsupported``, ``not-image``,
    ``empty-cell``, ``duplicate-id``), the row ``id`` and ``source`` (manifest line / row)
    where known."""

    path: str
    reason: str
    kind: str
    id: str = ""
    source: str = ""


@dataclass
class Inputs:
    """What :func:`resolve_inputs` found: the usable rows, what was left out, and remarks
    (duplicate ids, files renamed to their path because of a shared stem)."""

    frame: pd.DataFrame
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def duplicate_ids(self) -> list[str]:
        ids = self.frame["id"]
        return sorted(ids[ids.duplicated()].unique().tolist())

    def unique_ids(self) -> Inputs:
        """The first row of each id kept; later ones reported as skipped (``duplicate-id``)."""
        dup = self.frame["id"].duplicated()
        if not dup.any():
            return self
        first = dict(zip(self.frame["id"][~dup], self.frame["path"][~dup]))
        extra = [
            Skipped(
                p, f"duplicate id {i!r} (first used for {first[i]}): left out", "duplicate-id", i
            )
            for i, p in zip(self.frame["id"][dup], self.frame["path"][dup])
        ]
        frame = self.frame[~dup].reset_index(drop=True)
        return Inputs(frame, self.skipped + extra, self.notes)

    def skipped_frame(self) -> pd.DataFrame:
        """``id, path, reason, source`` of every skipped input (a rejects table)."""
        return pd.DataFrame(
            [
                {"id": s.id, "path": s.path, "reason": s.reason, "source": s.source}
                for s in self.skipped
            ],
            columns=["id", "path", "reason", "source"],
        )

    def summary(self, limit: int = 5) -> list[str]:
        """Lines for a console: counts of skipped inputs by kind, the first few, the notes."""
        lines = list(self.notes[:limit])
        if len(self.notes) > limit:
            lines.append(f"... and {len(self.notes) - limit} more remark(s)")
        if self.skipped:
            kinds = pd.Series([s.kind for s in self.skipped]).value_counts()
            counts = ", ".join(f"{n} {k}" for k, n in kinds.items())
            lines.append(f"{len(self.skipped)} input(s) skipped ({counts})")
            for s in self.skipped[:limit]:
                where = f"{s.source}: " if s.source else ""
                lines.append(f"  {where}{s.path}: {s.reason}")
            if len(self.skipped) > limit:
                lines.append(f"  ... and {len(self.skipped) - limit} more")
        return lines


def resolve_inputs(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    images: str | os.PathLike | None = None,
    *,
    id_col: str | None = None,
    path_col: str | None = None,
    ext: str = ".jpg",
    check_files: bool = True,
) -> Inputs:
    """Files, folders (recursive), folder-per-class trees and manifests -> :class:`Inputs`.

    A manifest's image paths come from ``path_col``, else from its first column named as in
    :data:`PATH_COLUMNS`; relative paths are taken from ``images``, else from the manifest's
    folder. With no path column the images are ``images/<id><ext>``. ``id_col`` defaults to
    ``id`` (a manifest with a path column may lack it: the path cell is then the id).
    With ``check_files`` every row's path must be an existing regular file, else the row is
    skipped with the reason (it is never opened). Raises ``FileNotFoundError`` for an input
    that does not exist and ``ValueError`` for an unreadable manifest, a missing column or
    when no usable image is left; every message names the file and the option to use.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("no inputs given: name image files, folders or manifests")
    frames: list[pd.DataFrame] = []
    skipped: list[Skipped] = []
    loose: list[tuple[Path, str, str | None]] = []  # (file, path in the folder given, class)
    for item in inputs:
        p = Path(item)
        if not os.path.lexists(p):
            raise FileNotFoundError(f"{p}: no such file or folder")
        if p.is_dir():
            found, skips = _walk(p)
            skipped += skips
            rel = _relative(found, p)
            tree = bool(found) and all("/" in r for r in rel)  # images in sub-folders only
            loose += [(f, r, r.split("/")[0] if tree else None) for f, r in zip(found, rel)]
        elif p.suffix.lower() in MANIFEST_SUFFIXES:
            problem = _file_problem(p)
            if problem:  # e.g. a FIFO named m.csv: never opened
                raise ValueError(f"{p}: the manifest {problem[1]}")
            frame, skips = _manifest_rows(p, images, id_col, path_col, ext, check_files)
            frames.append(frame)
            skipped += skips
        else:
            problem = _file_problem(p) or _not_image(p)
            if problem:
                skipped.append(Skipped(str(p), problem[1], problem[0]))
            else:
                loose.append((p, p.name, None))
    notes: list[str] = []
    if loose:
        frames.append(_loose_rows(loose, notes))
    frames = [f for f in frames if len(f)]
    if not frames:
        shown = ", ".join(str(i) for i in inputs[:3]) + (" ..." if len(inputs) > 3 else "")
        first = f"; e.g. {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise ValueError(
            f"no usable images in {shown} ({len(skipped)} input(s) skipped{first}); "
            f"images are recognised by suffix: {_SUPPORTED}"
        )
    frame = pd.concat(frames, ignore_index=True).fillna("")
    found = Inputs(frame, skipped, notes)
    for dup in found.duplicate_ids[:5]:
        paths = frame.loc[frame["id"] == dup, "path"].tolist()
        notes.append(f"duplicate id {dup!r} on {len(paths)} rows: {', '.join(paths[:3])}")
    if len(found.duplicate_ids) > 5:
        notes.append(f"{len(found.duplicate_ids)} duplicate ids in all")
    return found


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV, TSV, Parquet or JSON Lines table with every column as string; blanks stay ``""``.

    A ``.csv`` (or ``.txt``) may use ``;``, tab or ``|`` instead of commas: the header line
    says which. Errors name the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported manifest type {suffix!r}; use .csv, .tsv, .parquet or .jsonl"
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the manifest is empty; write a header line, e.g. id,path,label")
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix == ".jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            sep = "\t" if suffix == ".tsv" else _sniff(path)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{path}: no header line; write one, e.g. id,path,label") from err
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: malformed table ({err}); fix or remove that row") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8") from err
    except (ValueError, OSError) as err:  # pyarrow / json errors
        raise ValueError(f"{path}: cannot read the {suffix} manifest ({err})") from err
    frame.columns = [str(c) for c in frame.columns]
    return frame.astype("string").fillna("").astype(object)


# --------------------------------------------------------------------------------------------
# internals


def _sniff(path: Path) -> str:
    """The delimiter of a CSV from its header line: ``,`` unless the header has none of it and
    has ``;``, tab or ``|``."""
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        header = fh.readline()
    try:
        return csv.Sniffer().sniff(header, delimiters="".join(_SNIFF)).delimiter
    except csv.Error:
        return ","


def _file_problem(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(kind, reason)`` if ``path`` cannot be an image input, without opening it."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except FileNotFoundError:
        if os.path.islink(path):
            return "missing", "broken symbolic link: fix the link or remove it"
        return "missing", "file not found: fix the path or remove it from the manifest"
    except PermissionError:
        return "unreadable", "permission denied: make it readable or remove it"
    except OSError as err:
        return "unreadable", f"cannot stat the file ({err.strerror or err})"
    if stat.S_ISREG(mode):
        suffix = os.path.splitext(path)[1].lower()
        if suffix in _UNSUPPORTED:
            return (
                "unsupported",
                f"{_UNSUPPORTED[suffix]} photos are not supported: convert to JPEG or PNG",
            )
        return None
    if stat.S_ISDIR(mode):
        what = "a directory"
    elif stat.S_ISFIFO(mode):
        what = "a FIFO (named pipe)"
    elif stat.S_ISSOCK(mode):
        what = "a socket"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "a device"
    else:
        what = "an entry of an unknown kind"
    return "not-regular", f"is {what}, not an image file: not read"


def _not_image(path: Path) -> tuple[str, str] | None:
    """``(kind, reason)`` if ``path``'s suffix is not an image's (:data:`IMAGE_EXTENSIONS`)."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return None
    suffix = path.suffix or "no suffix"
    return "not-image", f"not an image file ({suffix}; images: {_SUPPORTED}): ignored"


def _walk(root: Path) -> tuple[list[Path], list[Skipped]]:
    """Image files under ``root`` (sorted) and the entries left out, with their reasons."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    for f in walk_files(root):  # hidden entries (e.g. macOS ._ resource forks) left out
        problem = _file_problem(f) or _not_image(f)
        if problem:
            skipped.append(Skipped(str(f), problem[1], problem[0]))
        else:
            files.append(f)
    return sorted(files), skipped


def _relative(files: list[Path], root: Path) -> list[str]:
    """Each file's path inside ``root``, with ``/`` (string slicing where it can: pathlib's
    ``relative_to`` is slow on 100k files)."""
    prefix = "" if str(root) == "." else os.path.join(str(root), "")
    out = []
    for f in map(str, files):
        rel = f[len(prefix) :] if f.startswith(prefix) else os.path.relpath(f, root)
        out.append(rel.replace(os.sep, "/"))
    return out


def _loose_rows(loose: list[tuple[Path, str, str | None]], notes: list[str]) -> pd.DataFrame:
    """Rows for image files: id = stem, or, where stems collide, the path inside the folder
    given (the full path where that collides too); ``label`` for files from class trees."""
    unique: dict[str, tuple[Path, str, str | None]] = {}
    for entry in loose:
        unique.setdefault(os.path.abspath(entry[0]), entry)  # one row per file
    files, rel, labels = zip(*unique.values())
    stems = pd.Series([os.path.splitext(r.rsplit("/", 1)[-1])[0] for r in rel])
    rel = pd.Series(rel)
    ids = stems.where(~stems.duplicated(keep=False), rel)
    ids = ids.where(~ids.duplicated(keep=False), pd.Series([str(f) for f in files]))
    for stem in stems[stems.duplicated(keep=False)].unique()[:5]:
        same = ids[stems == stem].tolist()
        notes.append(
            f"{len(same)} files share the name {stem!r}: their ids are {', '.join(same[:3])}"
        )
    frame = pd.DataFrame({"id": ids, "path": [str(f) for f in files]})
    if any(label is not None for label in labels):
        frame[FOLDER_TASK] = [label or "" for label in labels]
    return frame


def _manifest_rows(
    path: Path,
    images: str | os.PathLike | None,
    id_col: str | None,
    path_col: str | None,
    ext: str,
    check_files: bool,
) -> tuple[pd.DataFrame, list[Skipped]]:
    frame = read_table(path)
    columns = list(frame.columns)
    if path_col is not None and path_col not in columns:
        raise ValueError(
            f"{path}: no column {path_col!r} (given by --path-col); columns: {columns}"
        )
    path_col = path_col or next((c for c in PATH_COLUMNS if c in columns), None)
    if id_col is not None and id_col not in columns:
        raise ValueError(
            f"{path}: id column {id_col!r} (given by --id-col) not in the manifest; "
            f"columns: {columns}"
        )
    id_col = id_col or ("id" if "id" in columns else None)
    if path_col is None and id_col is None:
        raise ValueError(
            f"{path}: no id column 'id' and no path column ({', '.join(PATH_COLUMNS)}); "
            f"columns: {columns}; name them with --id-col or --path-col"
        )
    if path_col is None and images is None:
        raise ValueError(
            f"{path}: no path column ({', '.join(PATH_COLUMNS)}): give --images DIR "
            f"(holding <{id_col}>{ext}) or name the path column with --path-col"
        )
    base = Path(images) if images is not None else path.parent
    ids = frame[id_col].astype(str) if id_col else frame[path_col].astype(str)
    if path_col is not None:
        cells = frame[path_col].astype(str)
        paths = [c if not c or os.path.isabs(c) else str(base / c) for c in cells]
    else:  # os.path.join: as str(base / name) for plain ids, and far faster on 100k rows
        paths = [os.path.join(str(base), f"{i}{ext}") if i else "" for i in ids]
    line = "row" if path.suffix.lower() in (".parquet", ".pq") else "line"
    offset = 1 if line == "row" or path.suffix.lower() == ".jsonl" else 2
    keep: list[bool] = []
    skipped: list[Skipped] = []
    for n, (i, p) in enumerate(zip(ids, paths)):
        where = f"{path.name} {line} {n + offset}"
        if not i or not p:
            col = id_col if not i else path_col
            skipped.append(
                Skipped(p, f"empty {col!r} cell: fill it or drop the row", "empty-cell", i, where)
            )
            keep.append(False)
            continue
        problem = _file_problem(p) if check_files else None
        if problem:
            skipped.append(Skipped(p, problem[1], problem[0], i, where))
        keep.append(problem is None)
    out = frame.copy()
    out["id"] = list(ids)
    out["path"] = paths
    return out[keep].reset_index(drop=True), skipped
