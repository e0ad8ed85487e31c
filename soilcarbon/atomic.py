"""Atomic file output: write to a temporary file beside the target, then rename.

A crash or an error while writing never leaves a partial file under the final name. The
temporary file is ``.NAME.<pid>-<host>.<random>.part.<ext>`` next to the output: an error or a
signal removes it at once; after SIGKILL (or a power cut) the next write of the same output
removes the partial files whose process is gone (same host, pid no longer running), so debris
never accumulates. Every output path goes through :func:`check_output` before any work (the
suffix gives the kind, the folder must accept a new file).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import tempfile
from pathlib import Path

from soilcarbon.errors import SoilCarbonError
from soilcarbon.process import raise_if_interrupted


OUTPUT_KINDS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".png": "png", ".svg": "svg", ".pdf": "pdf",
                ".tif": "tif", ".tiff": "tif", ".html": "html", ".json": "json"}


def output_kind(path, kinds) -> str:
    """The kind of file written at ``path``, from its suffix: the one rule for every output (no
    ``p.tsv`` written comma-separated). ``kinds`` are the kinds this output may be."""
    path = Path(path)
    suffix = path.suffix.lower()
    kind = OUTPUT_KINDS.get(suffix)
    if kind not in kinds:
        names = [s for s, k in OUTPUT_KINDS.items() if k in kinds]
        names = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        raise SoilCarbonError(f"{path}: unknown output type {suffix or '(none)'!r}; name the output {names}")
    return kind


def check_folder(folder, path=None) -> None:
    """``folder`` exists and accepts a new file (tried: permissions, read-only or full file systems)."""
    folder = Path(folder) if str(folder) else Path(".")
    name = path if path is not None else folder
    if not folder.is_dir():
        raise SoilCarbonError(f"{name}: folder {folder} does not exist; create it first")
    try:
        handle, probe = tempfile.mkstemp(prefix=".soilcarbon-probe.", dir=folder)
    except OSError as exc:
        raise SoilCarbonError(f"{name}: cannot write in folder {folder}: {exc.strerror}") from exc
    os.close(handle)
    os.unlink(probe)


def check_output(path, kinds) -> str:
    """Check an output before any work: its suffix gives one of ``kinds``, it is not a folder, its
    folder exists and is writable. Returns the kind."""
    path = Path(path)
    kind = output_kind(path, kinds)
    if path.is_dir():
        raise SoilCarbonError(f"{path}: is a folder; give a file name")
    check_folder(path.parent, path)
    return kind


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; rename it to ``path`` on success.

    On any exception the temporary file is removed and the target is left untouched.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SoilCarbonError(f"{path}: folder {folder} does not exist; create it first")
    remove_stale_parts(path)
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-{_HOST}.", suffix=".part" + path.suffix,
                                       dir=folder)
    except OSError as exc:
        raise SoilCarbonError(f"{path}: cannot write in folder {folder}: {exc.strerror}") from exc
    os.close(handle)
    try:
        yield Path(tmp)
        raise_if_interrupted()  # a signal whose exception Python swallowed: still no output
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; use the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and writing_error(exc, tmp):
            raise SoilCarbonError(f"{path}: cannot write: {exc.strerror or exc}") from exc
        raise


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # a shared folder may serve several hosts


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_parts(path) -> list[Path]:
    """Remove the partial files of ``path`` left by processes of this host that are gone (killed
    while writing it); returns them. Partial files of running processes, of other hosts, and
    files of any other name are kept."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)-([0-9a-f]{8})\.[^.]+" + re.escape(".part" + path.suffix))
    removed = []
    try:
        names = [p for p in folder.iterdir() if p.name.startswith(f".{path.name}.")]
    except OSError:
        return removed
    for part in names:
        match = pattern.fullmatch(part.name)
        if match and match.group(2) == _HOST and not _running(int(match.group(1))):
            with contextlib.suppress(OSError):
                part.unlink()
                removed.append(part)
    return removed


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def writing_error(exc: OSError, tmp) -> bool:
    """Whether an OSError raised while an output was written is about that output: a write error
    code (disk full, read-only...) on the temporary file or on no file (``write`` calls name none).
    Errors naming another file (e.g. an input) are left as they are."""
    if exc.filename not in (None, str(tmp), tmp):
        return False
    if exc.errno in WRITE_ERRNOS:
        return True
    return exc.errno is None and "No space left" in str(exc)  # pyarrow's IO errors carry no errno
