"""Files refquant writes and the paths it reads: nothing lost, nothing read from outside.

    refuse_same_file(inputs, outputs)   an output that is an input (same path, hard link, symlink:
                                        the same inode) is refused before any work
    confined(directory, name, what)     a path named inside a checkpoint stays inside it
    AtomicFile(path)                    a file written under a temporary name and renamed into place
                                        when complete; removed on any error, interrupt or SIGTERM
    temp_dir(out)                       the same for a directory (a checkpoint's shards)
    pwrite_all(fd, a, at)               an array's bytes written at an offset, their writeback started
    start_writeback(fd, at, n)          the disk starts writing those bytes now (the fsync before
                                        the rename then waits for little)

Temporary names are `.NAME.refquant-HOST-PID-RANDOM.tmp` beside the destination. A run killed with
SIGKILL cannot remove its own; the next write into that directory removes those whose process is
gone (same host, PID no longer running) and says so on stderr.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

from ..errors import InputError, RefquantError

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"^\..*\.refquant-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")

def _sync_file_range():
    """Linux's sync_file_range(2) from the C library (os has none), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        f = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    f.restype = ctypes.c_int
    return f


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2        # <fcntl.h>: start writeback of the range's dirty pages, do not wait
PAGE = 4096                       # the unit of writeback
WRITEBACK_MIN = 256 << 10         # a smaller range is left to the fsync (one request fewer)
WRITEBACK_BATCH = 8 << 20         # a streaming writer starts writeback once this much is pending


def start_writeback(fd: int, at: int, nbytes: int) -> None:
    """Have the disk start writing bytes [at, at + nbytes) of `fd` now, without waiting for them:
    every output is fsync'ed before its rename, and bytes whose writeback began while the
    following tensors were quantized leave that fsync little to wait for (SmolLM2's 100 MB: 25
    of 30 ms; a 1 GB output: ~0.3 s). Whole pages inside the range only, and WRITEBACK_MIN of
    them at least: a page that the next bytes fill too is left to the fsync (else it is written
    twice, and on a disk with stable pages the next write waits for the first). A hint: where
    it does not exist or fails, nothing changes."""
    lo, hi = -(-at // PAGE) * PAGE, (at + nbytes) // PAGE * PAGE
    if _SYNC_FILE_RANGE is not None and hi - lo >= WRITEBACK_MIN:
        _SYNC_FILE_RANGE(fd, lo, hi - lo, _SYNC_FILE_RANGE_WRITE)


def pwrite_all(fd: int, a, at: int) -> None:
    """Write an array's bytes (C order, as they are in memory) at byte `at` of open file `fd`,
    all of them, and start their writeback."""
    import numpy as np
    b = memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    start, n = at, len(b)
    while len(b):
        k = os.pwrite(fd, b, at)
        b, at = b[k:], at + k
    start_writeback(fd, start, n)


class Terminated(BaseException):
    """A termination signal (SIGTERM, SIGHUP) arrived under the command line: it unwinds like an
    interrupt, so that every temporary file is removed on the way out."""


# the signal that arrived, once one has: a handler's exception can be lost (CPython drops one
# raised while compile() runs, during an import), so writers check again at each step
pending_signal = 0


def on_signal(signum, frame):
    global pending_signal
    pending_signal = signum
    raise Terminated(signum)


def check_signal() -> None:
    """Raise Terminated if a termination signal has arrived (see pending_signal)."""
    if pending_signal:
        raise Terminated(pending_signal)


# files refquant has open for reading in this process: (st_dev, st_ino) -> path
# (held weakly: a reader dropped without close() stops counting when it is collected)
_OPEN_INPUTS: "weakref.WeakValueDictionary[tuple[int, int], object]" = weakref.WeakValueDictionary()


def register_input(path, reader) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_dev, st.st_ino)
    _OPEN_INPUTS[key] = reader
    return key


def unregister_input(key, reader) -> None:
    if key is not None and _OPEN_INPUTS.get(key) is reader:
        del _OPEN_INPUTS[key]


def _identity(path):
    try:
        st = os.stat(path)          # follows symlinks: a link to an input is that input
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_same_file(inputs: Mapping[str, object], outputs: Mapping[str, object]) -> None:
    """Raise InputError when an output names the same file as an input: the same path, a hard
    link to it or a symlink to it (compared by device and inode), or a path that resolves to it."""
    ins = {label: p for label, p in inputs.items() if p is not None}
    for olabel, out in outputs.items():
        if out is None:
            continue
        oid = _identity(out)
        oreal = os.path.realpath(out)
        for ilabel, inp in ins.items():
            if (oid is not None and oid == _identity(inp)) or oreal == os.path.realpath(inp):
                raise InputError(f"{out}: the {olabel} is the {ilabel} {inp} (the same file); "
                                 f"refusing to overwrite an input: choose another output path")


def check_output_path(path) -> Path:
    """The output's directory exists and the output is not a directory; an existing output that
    is a file refquant has open as an input is refused."""
    p = Path(path)
    d = p.parent if str(p.parent) else Path(".")
    if not d.is_dir():
        raise InputError(f"{p}: output directory {d} does not exist" if not d.exists()
                         else f"{p}: {d} is not a directory")
    if p.is_dir():
        raise InputError(f"{p}: is a directory; the output must be a file path")
    oid = _identity(p)
    reader = _OPEN_INPUTS.get(oid) if oid is not None else None
    if reader is not None:
        raise InputError(f"{p}: is the input {getattr(reader, 'path', '?')} (the same file); refusing to "
                         f"overwrite an input: choose another output path")
    return p


def confined(directory, name, what: str, resolve: bool = True) -> Path:
    """directory/name, refused unless `name` is a relative path without '..' (not absolute) and,
    with `resolve`, stays inside `directory` once symlinks are resolved (a link pointing out is
    refused). A Hugging Face cache snapshot (.../models--ORG--NAME/snapshots/REVISION) holds links
    into its repository's blobs/ folder: those are inside too."""
    base = Path(directory)
    if not isinstance(name, str) or not name or "\0" in name:
        raise InputError(f"{base}: {what} {name!r} is not a file name")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise InputError(f"{base}: {what} {name!r} points outside the checkpoint directory")
    p = base / rel
    if not resolve:
        return p
    root = os.path.realpath(base)
    roots = [root]
    if os.path.basename(os.path.dirname(root)) == "snapshots":
        roots.append(os.path.join(os.path.dirname(os.path.dirname(root)), "blobs"))
    real = os.path.realpath(p)
    if not any(os.path.commonpath([r, real]) == r for r in roots):
        raise InputError(f"{base}: {what} {name!r} resolves to {real}, outside the checkpoint directory; "
                         f"copy the file in or remove the link")
    return p


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


_sweeps = threading.local()


@contextmanager
def one_sweep():
    """Within this context (this thread's), `remove_stale_temps` sweeps each directory once: a
    run that writes many files into one directory (a split model's parts) scans it once, not once
    a file (a scan of every entry for each of N files: quadratic in N)."""
    if getattr(_sweeps, "done", None) is not None:      # nested: the outer context's sweeps count
        yield
        return
    _sweeps.done = set()
    try:
        yield
    finally:
        _sweeps.done = None


def remove_stale_temps(directory) -> list[Path]:
    """Remove the temporary files and directories that killed refquant runs on this host left
    in `directory`; say each one on stderr. Returns what was removed. Inside `one_sweep`, a
    directory already swept there is not scanned again."""
    removed = []
    done = getattr(_sweeps, "done", None)
    if done is not None:
        key = os.path.abspath(directory)
        if key in done:
            return removed
        done.add(key)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP.match(e.name)
        if m is None or m["host"] != _HOST or _pid_alive(int(m["pid"])):
            continue
        p = Path(directory) / e.name
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        removed.append(p)
        print(f"refquant: removed {p}, a temporary file left by an interrupted run (process {m['pid']})",
              file=sys.stderr)
    return removed


def _temp_prefix(name: str) -> str:
    return f".{name}.refquant-{_HOST}-{os.getpid()}-"


class AtomicFile:
    """A file written under a temporary name beside its destination and renamed into place only
    when complete; on any error (or interrupt, or SIGTERM under the command line) the temporary
    file is removed and nothing appears."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        check_output_path(self.path)
        d = self.path.parent if str(self.path.parent) else Path(".")
        remove_stale_temps(d)
        try:
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(self.path.name), suffix=".tmp", dir=d)
        except OSError as e:
            raise RefquantError(f"{self.path}: cannot create a file in {d}: {e.strerror or e}") from None
        self._tmp = Path(tmp)
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result gets ordinary permissions
            self.fh = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._tmp.unlink()
            raise
        return self.fh

    def __exit__(self, exc_type, exc, tb):
        try:
            try:
                if exc_type is None:
                    check_signal()
                    self.fh.flush()
                    os.fsync(self.fh.fileno())
                self.fh.close()
                if exc_type is None:
                    os.replace(self._tmp, self.path)
            except OSError as e:       # a full disk, a quota: say which file could not be written
                raise RefquantError(f"{self.path}: cannot write: {e.strerror or e}") from None
        finally:
            try:
                self._tmp.unlink()
            except FileNotFoundError:
                pass
        if exc_type is not None and issubclass(exc_type, OSError) and not issubclass(exc_type, BrokenPipeError) \
                and getattr(exc, "filename", None) is None:
            raise RefquantError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
        return False


def temp_dir(out) -> Path:
    """A new temporary directory beside `out`, named as AtomicFile names its files."""
    out = Path(out)
    d = out.parent if str(out.parent) else Path(".")
    if not d.is_dir():
        raise InputError(f"{out}: output directory {d} does not exist" if not d.exists()
                         else f"{out}: {d} is not a directory")
    remove_stale_temps(d)
    try:
        return Path(tempfile.mkdtemp(prefix=_temp_prefix(out.name), suffix=".tmp", dir=d))
    except OSError as e:
        raise RefquantError(f"{out}: cannot create a directory in {d}: {e.strerror or e}") from None
