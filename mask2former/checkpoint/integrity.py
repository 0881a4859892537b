"""
The md5 check of checkpoint files whose names carry the first hex digits of their md5.

Model zoo files are named ``<name>_<first 6 hex digits of the file's md5>.pkl`` (e.g. ``model_final_9fd0ae.pkl``),
so a truncated download or a modified file can be recognised before it is used.
"""
import hashlib
import os
import re

_MD5_SUFFIX = re.compile(r"_([0-9a-fA-F]{6})\.(pkl|pth)$")

# Set to 0 to skip the check, for a file renamed to something that merely looks like "_<6 hex>.pkl".
MD5_CHECK_ENV = "MASK2FORMER_MD5_CHECK"


class CorruptCheckpointError(ValueError):
    """A checkpoint file's bytes are not what they should be: truncated, damaged or modified."""


def md5_check_enabled():
    """The check is on unless ``$MASK2FORMER_MD5_CHECK`` is ``0``."""
    return os.environ.get(MD5_CHECK_ENV, "1").strip() != "0"


def expected_md5_prefix(path):
    """The hex digits in a ``_<6 hex>.pkl``/``.pth`` file name, lower case, or None for other names."""
    match = _MD5_SUFFIX.search(os.path.basename(str(path)))
    return match.group(1).lower() if match else None


def file_md5(path, chunk_size=1 << 20):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5_prefix(path, source=None):
    """
    Raise :class:`CorruptCheckpointError` when ``path`` is named ``*_<6 hex>.pkl/.pth`` and its md5 does not
    start with those digits. ``source`` is where the file came from (a URL), when that differs from ``path``.
    """
    expected = expected_md5_prefix(path)
    if expected is None:
        return
    actual = file_md5(path)[: len(expected)]
    if actual != expected:
        origin = f"{path} (downloaded from {source}; delete it to download it again)" if source else str(path)
        raise CorruptCheckpointError(
            f"Checkpoint {origin} is corrupt or has been tampered with: its name says its md5 starts with "
            f"'{expected}', but the file's md5 starts with '{actual}'. Download it again from a trusted source. "
            f"If you renamed the file yourself, rename it without the '_{expected}' suffix, or skip this check "
            f"with the config option MODEL.WEIGHTS_MD5_CHECK False (or {MD5_CHECK_ENV}=0)."
        )
