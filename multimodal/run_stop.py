"""A broken dataset ends a run, whatever ``max_failures`` says.

Ray Train restarts the worker group after any worker error, up to ``max_failures`` times (``-1``:
forever). A ``DatasetBrokenError`` (a shard or a whole modality that does not decode) will fail
the same way on every attempt, so restarting cannot help. The worker that meets one records its
one-line message in ``<run>/_dataset_broken.json`` and re-raises; the next attempt's workers find
the record before doing anything and return it as the run's result (``stop_reason``
``dataset_broken``), which ends the run; the driver turns it, or the error itself when no restart
was allowed, into ``RunStopped`` with that one line. The driver clears the record when a run is
(re)submitted, so a fixed dataset can be trained on under the same name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from multimodal import fs

BROKEN_RECORD = "_dataset_broken.json"
DATASET_BROKEN = "dataset_broken"
_MESSAGE = re.compile(r"DatasetBrokenError: (.+)")


class RunStopped(RuntimeError):
    """The run cannot go on (its data is broken); the message is one line saying why."""


def dataset_broken_message(error: BaseException) -> str | None:
    """The one-line message of a ``DatasetBrokenError`` inside ``error`` (however Ray wrapped it)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        match = _MESSAGE.search(str(current))
        if match:
            return match.group(1).strip()
        if any(c.__name__ == "DatasetBrokenError" for c in type(current).__mro__) and current.args:
            return str(current.args[0]).splitlines()[0]
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


def record_broken_dataset(run_uri: str, error: BaseException) -> None:
    """Write the run's broken-data record if ``error`` holds a ``DatasetBrokenError``."""
    message = dataset_broken_message(error)
    if message is not None:
        fs.write_bytes_atomic(fs.join(run_uri, BROKEN_RECORD), json.dumps({"error": message}).encode())


def recorded_broken_dataset(run_uri: str) -> str | None:
    """The message of the run's broken-data record, None when there is none."""
    uri = fs.join(run_uri, BROKEN_RECORD)
    if not fs.exists(uri):
        return None
    return str(json.loads(fs.read_bytes(uri)).get("error", "dataset broken"))


def clear_broken_dataset(run_uri: str) -> None:
    """Remove the record (a new submission gets a fresh try)."""
    uri = fs.join(run_uri, BROKEN_RECORD)
    if fs.exists(uri):
        filesystem, path = fs.filesystem_for(uri)
        filesystem.delete_file(path)


def guard_batches(batches: Iterator, run_uri: str) -> Iterator:
    """``batches`` unchanged; a ``DatasetBrokenError`` from them is recorded before it propagates."""
    try:
        yield from batches
    except Exception as exc:
        record_broken_dataset(run_uri, exc)
        raise


def stopped_result(run_uri: str) -> dict[str, Any] | None:
    """What a worker returns instead of training when an earlier attempt met broken data."""
    message = recorded_broken_dataset(run_uri)
    return None if message is None else {"stop_reason": DATASET_BROKEN, "error": message}


def raise_if_stopped(result: dict[str, Any] | None, error: BaseException | None = None) -> None:
    """Driver side: ``RunStopped`` for a broken-data result or a training error caused by one."""
    if result and result.get("stop_reason") == DATASET_BROKEN:
        raise RunStopped(f"dataset broken: {result.get('error')}")
    if error is not None:
        message = dataset_broken_message(error)
        if message is not None:
            raise RunStopped(f"dataset broken: {message}") from None


__all__ = ["RunStopped", "dataset_broken_message", "guard_batches", "stopped_result", "raise_if_stopped",
           "clear_broken_dataset", "record_broken_dataset", "recorded_broken_dataset", "BROKEN_RECORD"]
