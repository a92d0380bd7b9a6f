"""The multimodal SLM: three media encoders in front of a LLaMA core from ``transformers``.

Read it top to bottom:

1. ``MediaTransformer`` -- the trunk every media encoder shares: a small bidirectional
   transformer over the modality's own tokens, pooled to a few tokens by learned queries and
   projected to the core width (nanoVLM's ViT + modality projector, in one module).
2. ``ImageEncoder`` (patch embedding), ``AudioEncoder`` (log-mel frames + strided 1-D convs),
   ``VideoEncoder`` (per-frame patches + spatial and temporal positions) turn raw media into tokens
   for that trunk. Text uses the core's own token embeddings.
3. ``MultimodalSLM`` adds a learned modality embedding to each modality's tokens, puts them
   before the text (``[image | audio | video | <bos> prompt text <eos> <pad>...]``), runs the
   ``transformers`` ``LlamaModel`` (RMSNorm, rotary positions, SwiGLU) through ``inputs_embeds``,
   and takes next-token cross-entropy on the text labels only.

A modality that a sample lacks keeps its token slots but they are zeroed and masked out of
attention (no other position can see them) and take no rotary position, so they change nothing;
a modality key missing from the batch dict contributes no tokens at all. Both give the same text
logits.

``python -m multimodal.model --preset slm-63m`` prints the parameter count per part.
"""

from __future__ import annotations

# ~415 lines: encoders, fusion, loss, bookkeeping and save/load of the one model, read top to
# bottom (generation lives in multimodal/generation.py, masks in multimodal/masks.py)

import argparse
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaModel

from multimodal import fs, generation
from multimodal.batch import BOS_ID, EOS_ID, IGNORE_INDEX, MODALITIES, PAD_ID, present_key
from multimodal.generation import Generation
from multimodal.masks import attention_mask_4d, position_ids
from multimodal.config import ModelConfig, preset

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------


class MediaTransformer(nn.Module):
    """Pre-norm transformer over ``[B, N, dim]`` tokens -> ``[B, num_tokens, out_dim]``.

    Positions are added by the caller (each modality has its own layout). Pooling is one
    cross-attention from ``num_tokens`` learned queries, so every modality yields a fixed,
    small number of tokens for the core whatever its input length.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, num_tokens: int, out_dim: int,
                 dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, num_heads, 4 * dim, dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)
        self.pool = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.project = nn.Linear(dim, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            tokens = layer(tokens)
        tokens = self.norm(tokens)
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        pooled, _ = self.pool(queries, tokens, tokens, need_weights=False)
        return self.project(pooled)


def _positions(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(1, *shape) * 0.02)


class ImageEncoder(nn.Module):
    """``[B, 3, S, S]`` -> ``[B, num_tokens, hidden]``: non-overlapping patches + a transformer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        enc, size = cfg.image, cfg.media.image_size
        if size % enc.patch_size:
            raise ValueError(f"image_size {size} is not a multiple of patch_size {enc.patch_size}")
        self.num_input_tokens = (size // enc.patch_size) ** 2
        self.patchify = nn.Conv2d(3, enc.dim, enc.patch_size, stride=enc.patch_size)
        self.position = _positions(self.num_input_tokens, enc.dim)
        self.trunk = MediaTransformer(enc.dim, enc.num_layers, enc.num_heads, enc.num_tokens,
                                      cfg.core.hidden_size, cfg.core.dropout)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        patches = self.patchify(image).flatten(2).transpose(1, 2)  # [B, P, dim]
        return self.trunk(patches + self.position)


class AudioEncoder(nn.Module):
    """``[B, n_mels, T]`` log-mel -> ``[B, num_tokens, hidden]``: two stride-2 convs (T/4) + a
    transformer, as in Whisper's audio stem."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        enc, media = cfg.audio, cfg.media
        self.subsample = nn.Sequential(
            nn.Conv1d(media.audio_n_mels, enc.dim, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(enc.dim, enc.dim, 3, stride=2, padding=1), nn.GELU())
        frames = media.audio_frames
        for _ in range(2):
            frames = (frames - 1) // 2 + 1
        self.num_input_tokens = frames
        self.position = _positions(frames, enc.dim)
        self.trunk = MediaTransformer(enc.dim, enc.num_layers, enc.num_heads, enc.num_tokens,
                                      cfg.core.hidden_size, cfg.core.dropout)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        frames = self.subsample(audio).transpose(1, 2)  # [B, T/4, dim]
        return self.trunk(frames + self.position)


class VideoEncoder(nn.Module):
    """``[B, F, 3, V, V]`` -> ``[B, num_tokens, hidden]``: per-frame patches with a spatial and a
    temporal position, one transformer over all frames' patches, pooled."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        enc, media = cfg.video, cfg.media
        if media.video_size % enc.patch_size:
            raise ValueError(f"video_size {media.video_size} is not a multiple of patch_size "
                             f"{enc.patch_size}")
        patches = (media.video_size // enc.patch_size) ** 2
        self.num_input_tokens = media.video_frames * patches
        self.patchify = nn.Conv2d(3, enc.dim, enc.patch_size, stride=enc.patch_size)
        self.spatial_position = _positions(1, patches, enc.dim)
        self.temporal_position = _positions(media.video_frames, 1, enc.dim)
        self.trunk = MediaTransformer(enc.dim, enc.num_layers, enc.num_heads, enc.num_tokens,
                                      cfg.core.hidden_size, cfg.core.dropout)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, f = video.shape[:2]
        patches = self.patchify(video.flatten(0, 1)).flatten(2).transpose(1, 2)  # [B*F, P, dim]
        patches = patches.unflatten(0, (b, f)) + self.spatial_position + self.temporal_position
        return self.trunk(patches.flatten(1, 2))  # [B, F*P, dim] -> pooled


ENCODERS: dict[str, type[nn.Module]] = {
    "image": ImageEncoder, "audio": AudioEncoder, "video": VideoEncoder}


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass
class MultimodalOutput:
    loss: torch.Tensor | None  # mean CE over all text label positions in the batch
    logits: torch.Tensor  # [B, L, V], text positions only (position t predicts labels[:, t+1])
    per_sample_loss: torch.Tensor | None = None  # [B] mean CE per sample (0 where no labels)
    per_sample_tokens: torch.Tensor | None = None  # [B] label positions per sample


def _core_config(cfg: ModelConfig) -> LlamaConfig:
    core = cfg.core
    llama = LlamaConfig(
        vocab_size=core.vocab_size, hidden_size=core.hidden_size,
        intermediate_size=core.intermediate_size, num_hidden_layers=core.num_layers,
        num_attention_heads=1, num_key_value_heads=1,  # set below: Llama's validator wants
        head_dim=core.head_dim or core.hidden_size // core.num_heads,  # width % heads == 0
        max_position_embeddings=core.max_position_embeddings, rope_theta=core.rope_theta,
        attention_dropout=core.dropout, rms_norm_eps=1e-5, hidden_act="silu",
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        tie_word_embeddings=core.tie_word_embeddings)
    # head pruning leaves e.g. 3 heads of width 32 in a 128-wide core: legal for the attention
    # (it uses head_dim), refused by the config's class validator, so assigned after it ran
    llama.num_attention_heads = core.num_heads
    llama.num_key_value_heads = core.num_kv_heads or core.num_heads
    llama._attn_implementation = "sdpa"
    return llama


def text_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    """Next-token CE on unshifted ``labels`` (-100 ignored).

    Returns the batch mean over label positions, the per-sample mean and per-sample counts."""
    targets = labels[:, 1:]
    token_loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets,
                                 ignore_index=IGNORE_INDEX, reduction="none")  # [B, L-1]
    counts = (targets != IGNORE_INDEX).sum(1)
    sums = token_loss.sum(1)
    per_sample = sums / counts.clamp(min=1)
    loss = sums.sum() / counts.sum().clamp(min=1)
    return loss, per_sample, counts


class MultimodalSLM(nn.Module):
    """Image/audio/video encoders + modality embeddings + a LLaMA core + an LM head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoders = nn.ModuleDict({name: ENCODERS[name](cfg) for name in MODALITIES})
        self.modality_embedding = nn.Embedding(len(MODALITIES), cfg.core.hidden_size)
        nn.init.normal_(self.modality_embedding.weight, std=0.02)
        self.embed_dropout = nn.Dropout(cfg.core.dropout)
        self.core = LlamaModel(_core_config(cfg))  # post_init: normal(0.02) weights
        self.lm_head = nn.Linear(cfg.core.hidden_size, cfg.core.vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)
        if cfg.core.tie_word_embeddings:
            self.lm_head.weight = self.core.embed_tokens.weight
        self.tokenizer: Tokenizer | None = None

    @property
    def num_media_tokens(self) -> int:
        """Core positions taken by media when every modality key is in the batch."""
        return sum(getattr(self.cfg, name).num_tokens for name in MODALITIES)

    # ---- fusion ------------------------------------------------------------------------------

    def encode_media(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Media tokens ``[B, M, hidden]`` and their validity ``[B, M]`` for the modality keys
        present in ``batch``; tokens of samples lacking a modality are zeroed and invalid."""
        b = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        tokens, valid = [], []
        for index, name in enumerate(MODALITIES):
            if name not in batch:
                continue
            present = batch.get(present_key(name))
            present = (torch.ones(b, dtype=torch.bool, device=device) if present is None
                       else present.to(device=device, dtype=torch.bool))
            media = batch[name].to(self.modality_embedding.weight.dtype)
            encoded = self.encoders[name](media) + self.modality_embedding.weight[index]
            tokens.append(encoded * present[:, None, None].to(encoded.dtype))
            valid.append(present[:, None].expand(-1, encoded.shape[1]))
        if not tokens:
            hidden = self.cfg.core.hidden_size
            empty = self.modality_embedding.weight.new_zeros(b, 0, hidden)
            return empty, torch.zeros(b, 0, dtype=torch.bool, device=device)
        return torch.cat(tokens, dim=1), torch.cat(valid, dim=1)

    def fuse(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                             torch.Tensor, int]:
        """``[media | text]`` embeddings, key validity, position ids and the media length."""
        media_tokens, media_valid = self.encode_media(batch)
        text_tokens = self.core.embed_tokens(batch["input_ids"])
        text_valid = batch["attention_mask"].bool()
        embeds = torch.cat([media_tokens, text_tokens.to(media_tokens.dtype)], dim=1)
        key_valid = torch.cat([media_valid, text_valid], dim=1)
        num_media = media_tokens.shape[1]
        return embeds, key_valid, position_ids(key_valid), num_media

    def forward(self, batch: dict[str, torch.Tensor]) -> MultimodalOutput:
        embeds, key_valid, positions, num_media = self.fuse(batch)
        hidden = self.core(inputs_embeds=self.embed_dropout(embeds),
                           attention_mask=attention_mask_4d(key_valid, embeds.shape[1]),
                           position_ids=positions, use_cache=False).last_hidden_state
        logits = self.lm_head(hidden[:, num_media:])
        labels = batch.get("labels")
        if labels is None:
            return MultimodalOutput(loss=None, logits=logits)
        loss, per_sample, counts = text_loss(logits, labels)
        return MultimodalOutput(loss, logits, per_sample, counts)

    # ---- generation --------------------------------------------------------------------------

    def generate(self, image: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                 video: torch.Tensor | None = None,
                 prompt_ids: torch.Tensor | list[list[int]] | None = None,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> list[Generation]:
        """Text for ``B`` samples from any mix of media (each given tensor: present for every
        sample) and optional prompts (ids *without* ``<bos>``; the model prepends it).

        Greedy by default; ``do_sample`` samples from ``softmax(logits / temperature)`` limited to
        ``top_k``, reproducibly with a seeded ``generator``. Prompts are left-padded (masked), the
        core's KV cache (``DynamicCache``) is reused each step unless ``use_cache=False`` (then the
        whole sequence is recomputed; same result). Stops per sample at ``<eos>``. The loop lives
        in ``multimodal.generation``.
        """
        return generation.generate(self, image, audio, video, prompt_ids, max_new_tokens,
                                   do_sample, temperature, top_k, generator, use_cache)

    def generate_text(self, tokenizer: Tokenizer | None = None,
                      prompt: str | list[str] | None = None, **kwargs: Any) -> list[Generation]:
        """``generate`` with string prompts in and decoded ``.text`` out (``tokenizer`` defaults
        to ``self.tokenizer``). A single string prompt is used for every sample."""
        return generation.generate_text(self, tokenizer, prompt, **kwargs)

    # ---- bookkeeping -------------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part and ``total`` (shared/tied tensors counted once in the total)."""
        parts = {
            "image_encoder": self.encoders["image"], "audio_encoder": self.encoders["audio"],
            "video_encoder": self.encoders["video"], "modality_embeddings": self.modality_embedding,
            "text_embeddings": self.core.embed_tokens, "core_layers": self.core.layers,
            "core_final_norm": self.core.norm, "lm_head": self.lm_head,
        }
        counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    def configure_optimizer(self, lr: float, weight_decay: float = 0.1,
                            betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
        """AdamW, nanoGPT style: weight decay on matrices (>= 2-D), none on biases/norms/vectors."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        fused = self.lm_head.weight.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)

    def estimate_flops_per_sample(self, text_len: int | None = None) -> float:
        """Training (forward + backward) FLOPs of one sample with every modality present: 6 per
        weight per token that uses it, plus nanoGPT's attention term ``12 * layers * width * seq``
        per token. Embedding lookups, positions and norms are left out (approximate)."""
        text_len = text_len or self.cfg.media.max_text_tokens
        core = self.cfg.core
        seq = self.num_media_tokens + text_len
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        flops = 6 * count(self.core.layers) * seq + 6 * count(self.lm_head) * text_len
        flops += 12 * core.num_layers * core.hidden_size * seq * seq
        for name in MODALITIES:
            encoder, enc_cfg = self.encoders[name], getattr(self.cfg, name)
            n = encoder.num_input_tokens
            flops += 6 * count(encoder) * n + 12 * enc_cfg.num_layers * enc_cfg.dim * n * n
        return float(flops)

    def estimate_flops_per_token(self, text_len: int | None = None) -> float:
        """``estimate_flops_per_sample`` per core position (media tokens + text tokens)."""
        text_len = text_len or self.cfg.media.max_text_tokens
        return self.estimate_flops_per_sample(text_len) / (self.num_media_tokens + text_len)

    # ---- save / load -------------------------------------------------------------------------

    def save_pretrained(self, uri: str, tokenizer: Tokenizer | None = None) -> None:
        """Write ``model.safetensors``, ``tokenizer.json`` (if any) and, last, ``config.json`` to a
        local folder or ``s3://`` prefix; each file is published atomically (temp + rename
        locally, one PUT on S3)."""
        uri = str(uri)
        tokenizer = tokenizer or self.tokenizer
        from multimodal.compress.storage import pack_state  # shared tensors stored once

        state, metadata = pack_state(self)
        weights = safetensors.torch.save(state, metadata=metadata)
        fs.write_bytes_atomic(fs.join(uri, WEIGHTS_FILE), weights)
        if tokenizer is not None:
            fs.write_bytes_atomic(fs.join(uri, TOKENIZER_FILE), tokenizer.to_str().encode())
        config = self.cfg.model_dump_json(indent=2).encode()
        fs.write_bytes_atomic(fs.join(uri, CONFIG_FILE), config)

    @classmethod
    def from_pretrained(cls, uri: str, device: str | torch.device = "cpu") -> MultimodalSLM:
        """Rebuild from ``config.json`` and load ``model.safetensors`` (no pickle; int8 weights
        dequantized, shared tensors re-tied); sets ``.tokenizer`` when ``tokenizer.json`` is
        there. Returned in eval mode."""
        uri = str(uri)
        cfg = ModelConfig.model_validate_json(fs.read_bytes(fs.join(uri, CONFIG_FILE)))
        model = cls(cfg)
        from multimodal.compress import storage  # int8 weights and aliases (slm-compress)

        raw = fs.read_bytes(fs.join(uri, WEIGHTS_FILE))
        state, aliases = storage.restore_state(safetensors.torch.load(raw), storage.read_metadata(raw))
        if cfg.core.tie_word_embeddings:
            state["lm_head.weight"] = state["core.embed_tokens.weight"]
        model.load_state_dict(state, strict=True)
        storage.retie(model, aliases)
        if fs.exists(fs.join(uri, TOKENIZER_FILE)):
            from tokenizers import Tokenizer
            tokenizer_json = fs.read_bytes(fs.join(uri, TOKENIZER_FILE)).decode()
            model.tokenizer = Tokenizer.from_str(tokenizer_json)
        return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# CLI: parameter counts of a preset
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m multimodal.model",
                                     description="Print the parameter count per part of a preset.")
    parser.add_argument("--preset", default="slm-63m", help="tiny or slm-63m (default slm-63m)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="override core.vocab_size (e.g. a trained tokenizer's size)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    cfg = preset(args.preset)
    if args.vocab_size:
        cfg.core.vocab_size = args.vocab_size
    counts = MultimodalSLM(cfg).parameter_counts()
    if args.json:
        print(json.dumps({"preset": args.preset, **counts}))
        return
    total = counts["total"]
    print(f"preset {args.preset} (vocab {cfg.core.vocab_size}, width {cfg.core.hidden_size}, "
          f"{cfg.core.num_heads} heads, {cfg.core.num_layers} layers)")
    for name, count in counts.items():
        print(f"  {name:<20} {count:>12,}  {100 * count / total:6.2f}%")


if __name__ == "__main__":
    main()
