"""Typed settings for the model and its media preprocessing (one source of truth).

``MediaSpec`` fixes the tensor shapes that the data pipeline produces and the model consumes
(see ``multimodal/batch.py``). ``ModelConfig`` holds the core (LLaMA-style) and the encoders.
Field names say which part they belong to, as in nanoVLM (``core.*``, ``image.*`` ...).
The training job's settings live in ``multimodal/job_config.py``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Base for all settings: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MediaSpec(StrictModel):
    """How raw media become fixed-shape tensors; shared by the decoders and the encoders."""

    image_size: int = Field(64, ge=8, description="images are resized to image_size x image_size")
    audio_sample_rate: int = Field(16000, ge=1000, description="audio is resampled to this rate (Hz)")
    audio_seconds: float = Field(2.0, gt=0, description="clips are padded or cut to this length")
    audio_n_fft: int = Field(512, ge=16)
    audio_hop_length: int = Field(256, ge=1)
    audio_n_mels: int = Field(64, ge=8)
    video_frames: int = Field(8, ge=1, description="frames sampled evenly over the clip")
    video_size: int = Field(64, ge=8, description="frames are resized to video_size x video_size")
    max_text_tokens: int = Field(64, ge=4, description="<bos> prompt text <eos>, padded/cut to this")

    @property
    def audio_samples(self) -> int:
        """Samples in one padded/cut clip."""
        return int(round(self.audio_sample_rate * self.audio_seconds))

    @property
    def audio_frames(self) -> int:
        """Spectrogram frames of one clip (torchaudio's centred STFT)."""
        return self.audio_samples // self.audio_hop_length + 1


class CoreConfig(StrictModel):
    """The LLaMA-style language core (the seed's ``SLMOtak`` section: width 512, 8 heads, 6 layers,
    dropout 0.1). ``intermediate_size`` 1376 is LLaMA's SwiGLU 8/3 x width rounded up to 32.

    The defaults (and the encoder defaults below) are the ``slm-63m`` preset: core 51,747,328
    parameters (embeddings 16,384,000 + 6 layers 18,978,816 + norm 512 + untied LM head
    16,384,000), encoders 3.62M + 3.81M + 3.76M (width 256, 4 layers each) and 1,536 for the
    modality embeddings: 62,938,112 in all, 0.16% under the seed's 63,037,440.
    """

    hidden_size: int = Field(512, ge=8)
    num_heads: int = Field(8, ge=1)
    num_layers: int = Field(6, ge=1)
    intermediate_size: int = Field(1376, ge=8)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    vocab_size: int = Field(32000, ge=8)
    max_position_embeddings: int = Field(512, ge=8)
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    # set by head pruning (slm-compress): width per head and key/value heads, when they are not
    # hidden_size // num_heads and num_heads
    head_dim: int | None = Field(None, ge=1)
    num_kv_heads: int | None = Field(None, ge=1)


class EncoderConfig(StrictModel):
    """A small transformer over one modality's inputs, pooled to ``num_tokens`` core tokens."""

    dim: int = Field(256, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_tokens: int = Field(4, ge=1)


class ImageEncoderConfig(EncoderConfig):
    """Patch embedding + the encoder transformer."""

    patch_size: int = Field(8, ge=1)


class AudioEncoderConfig(EncoderConfig):
    """Log-mel frames + conv subsampling + the encoder transformer."""


class VideoEncoderConfig(EncoderConfig):
    """Per-frame patches with temporal positions + the encoder transformer."""

    patch_size: int = Field(16, ge=1)


class ModelConfig(StrictModel):
    """Everything needed to rebuild the model; saved as ``config.json`` beside the weights."""

    preset: str = "custom"
    core: CoreConfig = Field(default_factory=CoreConfig)
    image: ImageEncoderConfig = Field(default_factory=ImageEncoderConfig)
    audio: AudioEncoderConfig = Field(default_factory=AudioEncoderConfig)
    video: VideoEncoderConfig = Field(default_factory=VideoEncoderConfig)
    media: MediaSpec = Field(default_factory=MediaSpec)


def _tiny() -> ModelConfig:
    return ModelConfig(
        preset="tiny",
        core=CoreConfig(hidden_size=128, num_heads=4, num_layers=2, intermediate_size=352,
                        dropout=0.0, vocab_size=512, max_position_embeddings=128),
        image=ImageEncoderConfig(patch_size=4, dim=64, num_layers=2, num_heads=4, num_tokens=4),
        audio=AudioEncoderConfig(dim=64, num_layers=2, num_heads=4, num_tokens=4),
        video=VideoEncoderConfig(patch_size=8, dim=64, num_layers=1, num_heads=4, num_tokens=4),
        media=MediaSpec(image_size=32, audio_sample_rate=8000, audio_seconds=1.5, audio_n_fft=512,
                        audio_hop_length=128, audio_n_mels=48, video_frames=4, video_size=32,
                        max_text_tokens=24),
    )


def _slm_63m() -> ModelConfig:
    """The seed's SLM: a 512/8/6 LLaMA core, vocab 32000, three width-256 encoders (~63.0M)."""
    return ModelConfig(preset="slm-63m")


PRESETS = {"tiny": _tiny, "slm-63m": _slm_63m}


def preset(name: str) -> ModelConfig:
    """A fresh ``ModelConfig`` for a named preset (``tiny`` or ``slm-63m``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
