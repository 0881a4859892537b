"""Writing a file so that a reader sees either its previous content or the complete new one, never a mix."""
import contextlib
import os


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, before_commit=None):
    """
    Open ``<path>.tmp`` for binary writing; when the block ends, flush and fsync it, call
    ``before_commit(tmp_path)`` (it may raise to abandon the write), rename it over ``path`` and fsync the directory
    so that the rename itself survives a crash. If the block raises, ``path`` is untouched and the temp file removed.
    A process killed mid-write leaves only a stale ``.tmp``, which the next write overwrites.
    """
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_commit is not None:
            before_commit(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
