"""An HTTP body to a query the experts can answer, or a 4xx with one line of reason.

The body is JSON ``{"prompt": "...", "image": "<base64>", "audio": "<base64>", "video":
"<base64>", "max_new_tokens": 32}``; every field is optional but there must be a prompt or some
media. Media are decoded by the pipeline's own decoders (``multimodal/data/decode.py``), once per
distinct ``MediaSpec`` among the experts, so a request with broken media is refused before any
expert sees it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

import numpy as np
from pydantic import Field, ValidationError

from multimodal.batch import MODALITIES
from multimodal.config import MediaSpec, StrictModel


class BadRequest(Exception):
    """A request the hub refuses: an HTTP status and one line of reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class GenerateRequest(StrictModel):
    prompt: str | None = Field(None, max_length=4000)
    image: str | None = None
    audio: str | None = None
    video: str | None = None
    max_new_tokens: int = Field(32, ge=1)


@dataclass
class Query:
    """What every expert receives: the prompt and the media decoded for its ``MediaSpec``."""

    prompt: str | None
    max_new_tokens: int
    media_by_spec: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        first = next(iter(self.media_by_spec.values()), {})
        return tuple(m for m in MODALITIES if m in first)

    def for_spec(self, spec_key: str) -> dict[str, np.ndarray]:
        return self.media_by_spec.get(spec_key, {})


def spec_key(spec: MediaSpec) -> str:
    """A stable name for a ``MediaSpec`` (experts sharing one share the decoded media)."""
    return spec.model_dump_json()


def parse_body(body: bytes, max_new_tokens_limit: int) -> GenerateRequest:
    """JSON -> ``GenerateRequest``; raises ``BadRequest`` (400 malformed, 422 invalid)."""
    try:
        values = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"malformed JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise BadRequest(400, "the body must be a JSON object")
    try:
        request = GenerateRequest.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            raise BadRequest(422, f"unknown field {key!r}; allowed: prompt, image, audio, video, "
                                  f"max_new_tokens") from None
        raise BadRequest(422, f"{key}: {first['msg']}") from None
    if request.max_new_tokens > max_new_tokens_limit:
        raise BadRequest(422, f"max_new_tokens: at most {max_new_tokens_limit}")
    if not request.prompt and not any(getattr(request, m) for m in MODALITIES):
        raise BadRequest(422, "nothing to answer: give a prompt, an image, audio or a video")
    return request


def _b64(modality: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, f"{modality}: not valid base64") from None


def decode_query(request: GenerateRequest, specs: dict[str, MediaSpec]) -> Query:
    """Decode the request's media once per spec; raises ``BadRequest`` (400 bad base64, 422
    undecodable media)."""
    from multimodal.data.decode import MediaDecodeError, decode_audio, decode_image, decode_video

    decoders = {"image": decode_image, "audio": decode_audio, "video": decode_video}
    raw = {m: _b64(m, getattr(request, m)) for m in MODALITIES if getattr(request, m)}
    query = Query(prompt=request.prompt or None, max_new_tokens=request.max_new_tokens)
    for key, spec in specs.items():
        decoded = {}
        for modality, data in raw.items():
            try:
                decoded[modality] = decoders[modality](data, spec)
            except MediaDecodeError as exc:
                raise BadRequest(422, f"{modality}: cannot decode: {str(exc).splitlines()[0]}") from None
            except Exception as exc:  # a codec library's own error on hostile bytes
                raise BadRequest(422, f"{modality}: cannot decode: {type(exc).__name__}") from None
        query.media_by_spec[key] = decoded
    return query
