"""Output files: checked before any work starts, written atomically.

A path the CLI writes must be absent or a regular file (never a symlink, a
device or a folder: an atomic rename would replace the link or the device
node itself), and its folder must accept a new file. Writes go to a temporary
file in the same folder, then a rename, so an interrupted or failed write
leaves the previous file as it was.
"""
import os
import tempfile
from typing import Callable, Optional

from .errors import UserError


def _refuse_reason(path: str) -> Optional[str]:
    """Why `path` must not be replaced by a new file, or None."""
    if os.path.islink(path):
        return f"is a symbolic link (to {os.readlink(path)}); give the file itself"
    if os.path.exists(path) and not os.path.isfile(path):
        return "exists and is not a regular file"
    return None


def check_output_path(path: str, option: str) -> None:
    """Raises UserError naming `option` unless `path` can be written (creating its folder if needed)."""
    reason = _refuse_reason(path)
    if reason is not None:
        raise UserError(f"{option} {path} {reason}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.probe-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise UserError(f"{option} {path}: cannot write into {folder} ({error.strerror or error})") from None


def atomic_write(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """write(temporary_path) then rename it over `path`. OSError if `path` is not a regular file or absent."""
    reason = _refuse_reason(path)
    if reason is not None:
        raise OSError(f"{path} {reason}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    """Atomically replaces `path` with `text`."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(text)

    atomic_write(path, write)
