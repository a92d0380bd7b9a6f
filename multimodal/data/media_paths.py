"""Where a manifest's media paths may point, and reading one media file with a size cap.

A manifest is data, often written by someone else: a row must not make ``slm-make-shards`` read
``~/.aws/credentials``, another bucket or ``/dev/zero``. By default a media path resolves inside
the manifest's own folder (local) or prefix (S3):

- relative paths are joined to that folder/prefix; ``..`` may not climb out of it;
- absolute paths and ``s3://`` URIs are accepted only when they lie inside it;
- ``~``, ``file://``, other URI schemes, and (for a local manifest) symlinks that lead outside
  are refused.

``allow_outside=True`` (``--allow-outside-paths``) restores the old, trusting behaviour.
``read_media`` reads only regular files (never a device, FIFO or directory) and refuses files over
``max_bytes`` before reading them.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

import pyarrow.fs as pafs

from multimodal import fs

DEFAULT_MAX_MEDIA_BYTES = 256_000_000


class MediaRefused(ValueError):
    """A manifest's media path is outside the allowed place, too large, or not a regular file."""


class MediaMissing(FileNotFoundError):
    """The media file a manifest names does not exist."""


def manifest_dir(manifest: str) -> str:
    """The folder (local, absolute, resolved) or ``s3://bucket/prefix`` a manifest lies in."""
    manifest = str(manifest)
    if fs.is_s3(manifest):
        return manifest.rsplit("/", 1)[0]
    return str(Path(manifest).expanduser().resolve().parent)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_media(base_dir: str, path: str, allow_outside: bool = False) -> str:
    """A manifest's media path → a local absolute path or an ``s3://`` URI.

    Raises ``MediaRefused`` when the path leads outside ``base_dir`` and not ``allow_outside``.
    """
    if allow_outside:
        return _resolve_trusting(base_dir, path)
    if path.startswith("~"):
        raise MediaRefused(f"'~' paths are not allowed ({path}); use --allow-outside-paths to trust them")
    scheme = path.split("://", 1)[0] if "://" in path else None
    if scheme is not None and scheme != "s3":
        raise MediaRefused(f"{scheme}:// paths are not allowed ({path}); use --allow-outside-paths")
    if fs.is_s3(base_dir):
        root = posixpath.normpath(base_dir[len("s3://"):])
        if fs.is_s3(path):
            key = posixpath.normpath(path[len("s3://"):])
        elif path.startswith("/"):
            raise MediaRefused(f"local path {path} in an S3 manifest; use --allow-outside-paths")
        else:
            key = posixpath.normpath(posixpath.join(root, path))
        if not _inside(key, root):
            raise MediaRefused(f"{path} is outside the manifest's prefix s3://{root}/")
        return "s3://" + key
    if scheme == "s3":
        raise MediaRefused(f"{path}: S3 media in a local manifest; use --allow-outside-paths")
    root = str(Path(base_dir).resolve())
    resolved = str((Path(root) / path).resolve())  # follows symlinks, folds '..'
    if not _inside(resolved, root):
        raise MediaRefused(f"{path} is outside the manifest's folder {root}")
    return resolved


def _resolve_trusting(base_dir: str, path: str) -> str:
    if fs.is_s3(path):
        return path
    if path.startswith("file://"):
        path = path[len("file://"):]
    if fs.is_s3(base_dir) and not path.startswith(("/", "~")):
        return "s3://" + posixpath.normpath(posixpath.join(base_dir[len("s3://"):], path))
    candidate = Path(path).expanduser()
    return str(candidate if candidate.is_absolute() else Path(base_dir) / candidate)


def read_media(location: str, max_bytes: int = DEFAULT_MAX_MEDIA_BYTES) -> bytes:
    """The bytes of one media file; refuses non-regular files and files over ``max_bytes``.

    Raises ``MediaMissing`` when it does not exist, ``MediaRefused`` when it may not be read.
    """
    if fs.is_s3(location):
        return _read_s3(location, max_bytes)
    try:
        info = os.stat(location)
    except FileNotFoundError:
        raise MediaMissing(location) from None
    if not stat.S_ISREG(info.st_mode):
        raise MediaRefused(f"{location} is not a regular file")
    if info.st_size > max_bytes:
        raise MediaRefused(f"{location} is {info.st_size} bytes, over the {max_bytes}-byte limit "
                           f"(--max-media-bytes)")
    with open(location, "rb") as handle:
        data = handle.read(max_bytes + 1)  # the file may have grown since stat()
    if len(data) > max_bytes:
        raise MediaRefused(f"{location} is over the {max_bytes}-byte limit (--max-media-bytes)")
    return data


def _read_s3(uri: str, max_bytes: int) -> bytes:
    filesystem, path = fs.filesystem_for(uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise MediaMissing(uri)
    if info.type != pafs.FileType.File:
        raise MediaRefused(f"{uri} is not a file")
    if info.size is not None and info.size > max_bytes:
        raise MediaRefused(f"{uri} is {info.size} bytes, over the {max_bytes}-byte limit "
                           f"(--max-media-bytes)")
    with filesystem.open_input_stream(path) as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise MediaRefused(f"{uri} is over the {max_bytes}-byte limit (--max-media-bytes)")
    return data


__all__ = ["DEFAULT_MAX_MEDIA_BYTES", "MediaMissing", "MediaRefused", "manifest_dir", "read_media",
           "resolve_media"]
