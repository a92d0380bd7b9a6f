"""WebDataset tar shards (LAION/OpenCLIP layout: ``key.jpg``, ``key.txt``, ``key.wav`` ...).

Members are grouped by key (the basename up to the first dot) and mapped onto the shard schema
by extension (the part after the *last* dot): an image extension → ``image``, audio → ``audio``,
video → ``video``; ``txt``/``text``/``caption`` → ``text``; ``prompt`` → ``prompt``; a ``json``
member (img2dataset's metadata) gives the text from its ``caption``/``text`` key when there is no
text member; anything else is ignored. When a key has two files of one modality, the first (in tar order) wins.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator, Sequence

import pyarrow.fs as pafs

from multimodal import fs
from multimodal.data.decode import modality_for_extension

TEXT_EXTENSIONS = ("txt", "text", "caption")
PROMPT_EXTENSIONS = ("prompt",)


def list_tar_shards(uri: str | Sequence[str]) -> list[str]:
    """The ``.tar`` URIs of a prefix (sorted by name), a single tar, or a list of tars."""
    if not isinstance(uri, str):
        return sorted(str(u) for u in uri)
    if uri.endswith(".tar"):
        return [uri]
    filesystem, path = fs.filesystem_for(uri)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.Directory and not fs.is_s3(uri):
        return []
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except (FileNotFoundError, OSError):
        return []
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".tar"))
    return [fs.join(uri, n) for n in names]


def tar_name(uri: str) -> str:
    return posixpath.basename(str(uri).rstrip("/"))


def map_members(key: str, members: dict[str, bytes]) -> dict:
    """One WebDataset sample (``{suffix: bytes}``) → a row of the shard schema (without sample_id)."""
    row: dict = {"id": key, "text": "", "prompt": "", "image": None, "image_ext": None,
                 "audio": None, "audio_ext": None, "video": None, "video_ext": None}
    json_text = ""
    for suffix, value in members.items():
        if value is None:
            continue
        ext = suffix.lower().rsplit(".", 1)[-1]
        if ext == "json" and not json_text:
            json_text = _json_caption(value)
        elif ext in TEXT_EXTENSIONS and not row["text"]:
            row["text"] = _text(value)
        elif ext in PROMPT_EXTENSIONS and not row["prompt"]:
            row["prompt"] = _text(value)
        else:
            modality = modality_for_extension(ext)
            if modality and row[modality] is None:
                row[modality] = bytes(value)
                row[f"{modality}_ext"] = ext
    row["text"] = row["text"] or json_text
    return row


def _json_caption(value) -> str:
    """The ``caption`` (or ``text``) of a sample's JSON metadata, "" when it has none."""
    try:
        data = json.loads(value if isinstance(value, str) else bytes(value).decode("utf-8", errors="replace"))
    except ValueError:
        return ""
    if isinstance(data, dict):
        for key in ("caption", "text"):
            if isinstance(data.get(key), str):
                return data[key].strip()
    return ""


def _text(value) -> str:
    if isinstance(value, str):
        return value.strip()
    return bytes(value).decode("utf-8", errors="replace").strip()


def iter_tar_samples(uri: str) -> Iterator[dict]:
    """Rows of one tar shard, in tar order, read as a stream (no Ray needed)."""
    filesystem, path = fs.filesystem_for(uri)
    with filesystem.open_input_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        key, members = None, {}
        for member in tar:
            if not member.isfile():
                continue
            base = posixpath.basename(member.name)
            dirname = posixpath.dirname(member.name)
            this_key, _, suffix = base.partition(".")
            if not this_key or not suffix:  # "._x.jpg", "README": no sample key (Ray's reader skips them too)
                continue
            this_key = posixpath.join(dirname, this_key) if dirname else this_key
            if key is not None and this_key != key:
                yield map_members(key, members)
                members = {}
            key = this_key
            handle = tar.extractfile(member)
            members[suffix] = handle.read() if handle else b""
        if key is not None:
            yield map_members(key, members)


__all__ = ["list_tar_shards", "iter_tar_samples", "map_members", "tar_name"]
