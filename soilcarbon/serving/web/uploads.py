"""Uploaded files of the web page, saved into a job folder and turned into one input path.

The page accepts one CSV/Parquet table, or Bruker OPUS files (several ``.0`` files and/or ``.zip``
archives of them). The result is the path :func:`soilcarbon.serving.batch.predict_file` reads:
the table, the single OPUS file, or a folder of OPUS files, so scoring runs on the batch path of
``soilcarbon predict`` itself.

Uploads are copied in blocks from the multipart parser's spooled temporary files (kept on disk
past 1 MB), never read whole into memory. Zip members are extracted by their base name only (no
path from the archive is trusted) and their total uncompressed size is bounded, so an archive
cannot write outside the job folder or fill the disk.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from soilcarbon.errors import SoilCarbonError
from soilcarbon.spectral.readers import OPUS_MAGIC, TABLE_SUFFIXES

BLOCK = 1024 * 1024
#: Largest total uncompressed size of the members of uploaded zip archives, as a multiple of the
#: body limit (OPUS files compress about 2:1; a bomb compresses 1000:1).
ZIP_EXPANSION = 4


class WebError(SoilCarbonError):
    """A user error with its HTTP status (413 too large, 415 unsupported type, 404 not found)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def safe_name(name: str | None, index: int) -> str:
    """The base name of an uploaded file, never hidden and never a path."""
    base = Path((name or "").replace("\\", "/")).name.strip()
    if not base or base in (".", ".."):
        base = f"upload-{index}"
    return "_" + base if base.startswith(".") else base


def kind_of(path: Path) -> str:
    """``table``, ``zip`` or ``opus`` (by suffix, then by the OPUS magic bytes); else WebError 415."""
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return "table"
    if suffix == ".zip":
        return "zip"
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == OPUS_MAGIC or suffix[1:].isdigit():
        return "opus"
    allowed = ", ".join(sorted(TABLE_SUFFIXES))
    raise WebError(415, f"{path.name}: unsupported file type; upload one table ({allowed}), Bruker OPUS files "
                        "(.0, .1 ...) or a .zip of OPUS files")


def save_uploads(uploads, folder: Path, max_unzipped_bytes: int) -> Path:
    """Save ``uploads`` (objects with ``filename`` and a binary ``file``) under ``folder``; return
    the input path to predict: one table, one OPUS file or a folder of OPUS files."""
    if not uploads:
        raise SoilCarbonError("no file chosen: choose a CSV/Parquet table, OPUS files or a .zip of OPUS files")
    folder.mkdir(parents=True, exist_ok=True)
    tables, opus, names = [], [], set()

    def claim(name: str) -> Path:
        if name in names:
            raise SoilCarbonError(f"two uploaded files are named {name!r}; give every file its own name")
        names.add(name)
        return folder / name

    for index, upload in enumerate(uploads):
        target = claim(safe_name(upload.filename, index))
        with open(target, "wb") as out:
            shutil.copyfileobj(upload.file, out, BLOCK)
        kind = kind_of(target)
        if kind == "table":
            tables.append(target)
        elif kind == "opus":
            opus.append(target)
        else:
            opus.extend(_extract_zip(target, claim, max_unzipped_bytes))
            target.unlink()
    if tables and (opus or len(tables) > 1):
        raise SoilCarbonError("upload either one table or OPUS files, not several tables or a mix")
    if tables:
        return tables[0]
    if not opus:
        raise SoilCarbonError("the uploaded archive holds no OPUS files (.0, .1 ...)")
    if len(opus) == 1:
        return opus[0]
    spectra = folder / "opus-files"
    spectra.mkdir()
    for path in opus:
        path.rename(spectra / path.name)
    return spectra


def _extract_zip(archive: Path, claim, max_bytes: int) -> list[Path]:
    """OPUS members of ``archive``, extracted by base name (folders and other files are skipped)."""
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SoilCarbonError(f"{archive.name}: not a readable zip archive ({exc})") from None
    out, total = [], 0
    with bundle:
        for index, info in enumerate(bundle.infolist()):
            base = Path(info.filename.replace("\\", "/")).name
            if info.is_dir() or not base or base.startswith(".") or base.startswith("__MACOSX"):
                continue
            total += info.file_size
            if total > max_bytes:
                raise WebError(413, f"{archive.name}: the archive unpacks to more than {max_bytes} bytes; "
                                    "send it in smaller parts")
            target = claim(safe_name(base, index))
            try:
                with bundle.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, BLOCK)
            except (zipfile.BadZipFile, OSError, RuntimeError) as exc:  # RuntimeError: encrypted member
                raise SoilCarbonError(f"{archive.name}: cannot extract {base} ({exc})") from None
            if kind_of(target) != "opus":
                raise WebError(415, f"{archive.name}: {base} is not an OPUS file; a .zip may hold OPUS files only")
            out.append(target)
    return out
