"""One line for what no check of the command line foresaw: a plugin breaking its contract, a full
or read-only disk, an output folder that cannot be made. The traceback goes to a log file."""

from __future__ import annotations

from pathlib import Path

import typer


def unforeseen(exc: BaseException, log: Path | None) -> typer.Exit:
    """One line for an error no check foresaw (a plugin breaking its contract, a fault of the
    machine): the traceback goes to ``log`` (a temporary file when ``log`` is None or cannot be
    written), whose path the line names."""
    import tempfile
    import traceback

    text = traceback.format_exc()
    try:
        if log is None:
            raise OSError
        log.write_text(text)
    except OSError:
        fd, name = tempfile.mkstemp(prefix="autosim-error-", suffix=".log")
        with open(fd, "w") as file:
            file.write(text)
        log = Path(name)
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    what = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    typer.echo(f"error: {what} (traceback in {log})", err=True)
    return typer.Exit(1)


def disk_error(exc: BaseException, where: Path | None = None) -> str | None:
    """One line for a file that could not be written (a full disk, a read-only folder, no
    permission), or None for any other error; ``where``: what was being written, when the error
    does not say."""
    import errno

    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                                         errno.EPERM, errno.ENOTDIR):
        return None
    name = exc.filename or where
    return f"cannot write{f' {name}' if name else ''}: {exc.strerror or exc}"


def error_log(folder: Path) -> Path | None:
    """``folder/error.log`` when ``folder`` exists (else None: a temporary file takes the traceback)."""
    return folder / "error.log" if folder.is_dir() else None


def unwritable_out(out: Path) -> str | None:
    """Why a folder cannot be made or written at ``out`` (None: it can): a file on its way, or
    no permission to write where it is or would go."""
    import os

    path = out.absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{out} is a file" if existing == path else f"{out} cannot be made: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{out} is not writable" if existing == path else f"{out} cannot be made: {existing} is not writable"
    return None
