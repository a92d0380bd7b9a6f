"""Fine-tuning from an exported model: start weights, frozen parts, LoRA on the core, merged export.

A fine-tune starts from a folder written by ``MultimodalSLM.save_pretrained`` (local or ``s3://``):
it takes that model's ``config.json`` and ``tokenizer.json`` as they are, loads its weights, then

- ``freeze``: ``encoders`` (the three media encoders and the modality embeddings), ``core`` (the
  LLaMA core, its token embeddings and the LM head) or ``none``; frozen tensors get no gradient and
  no optimizer state, so they leave the run bit-identical;
- ``lora_rank``: LoRA adapters (``peft``) on every linear layer of the core's decoder blocks; the
  base weights of those layers are frozen, only the low-rank ``A``/``B`` matrices train.

At export ``merged_export`` folds the adapters into the plain weights (``merge_and_unload``), so the
result is an ordinary ``MultimodalSLM`` that ``from_pretrained`` loads like any other model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from multimodal import fs
from multimodal.config import ModelConfig

if TYPE_CHECKING:  # pragma: no cover
    from multimodal.job_config import FinetuneSettings
    from multimodal.model import MultimodalSLM

FreezePart = Literal["encoders", "core", "none"]
# the linear layers of a LLaMA decoder block (attention and SwiGLU MLP)
LORA_TARGETS = r"core\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def base_model_config(uri: str) -> ModelConfig:
    """The ``config.json`` of the exported model at ``uri``."""
    from multimodal.model import CONFIG_FILE

    path = fs.join(uri, CONFIG_FILE)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: no {CONFIG_FILE}; --init-from takes a folder written by save_pretrained")
    return ModelConfig.model_validate_json(fs.read_bytes(path))


def base_tokenizer_uri(uri: str) -> str:
    """The ``tokenizer.json`` beside the exported model at ``uri`` (it must be there)."""
    from multimodal.model import TOKENIZER_FILE

    path = fs.join(uri, TOKENIZER_FILE)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: no {TOKENIZER_FILE}; a fine-tune keeps the base model's tokenizer")
    return path


def part_parameters(model: MultimodalSLM, part: FreezePart) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the named part (``none``: nothing)."""
    prefixes = {"encoders": ("encoders.", "modality_embedding."), "core": ("core.", "lm_head."),
                "none": ()}[part]
    return [(name, p) for name, p in model.named_parameters() if name.startswith(prefixes)]


def add_lora(model: MultimodalSLM, rank: int, alpha: float | None = None) -> MultimodalSLM:
    """Inject LoRA adapters (rank ``rank``, scale ``alpha / rank``, default alpha = 2 x rank) into
    the core's linear layers in place; their base weights are frozen, everything else untouched."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0,
                        target_modules=LORA_TARGETS, bias="none")
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model = inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.requires_grad_(True)
        elif ".base_layer." in name:
            parameter.requires_grad_(False)
        else:
            parameter.requires_grad_(requires_grad.get(name, True))
    return model


def merge_lora(model: MultimodalSLM) -> MultimodalSLM:
    """Fold every LoRA adapter into its base weight and put the plain ``nn.Linear`` back."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    return model


def prepare_finetune(model: MultimodalSLM, settings: FinetuneSettings) -> MultimodalSLM:
    """Load the base weights into ``model``, freeze the chosen part and add LoRA when asked."""
    from multimodal.model import MultimodalSLM as Model

    base = Model.from_pretrained(settings.init_from)
    model.load_state_dict(base.state_dict(), strict=True)
    for _, parameter in part_parameters(model, settings.freeze):
        parameter.requires_grad_(False)
    if settings.lora_rank:
        model = add_lora(model, settings.lora_rank, settings.lora_alpha)
    return model


def merged_export(cfg: ModelConfig, weights: dict[str, torch.Tensor],
                  settings: FinetuneSettings | None) -> MultimodalSLM:
    """A plain ``MultimodalSLM`` holding ``weights`` (a training state dict, LoRA keys included
    when the run used LoRA), with the adapters merged."""
    from multimodal.model import MultimodalSLM as Model

    model = Model(cfg)
    if settings is not None and settings.lora_rank:
        model = add_lora(model, settings.lora_rank, settings.lora_alpha)
        model.load_state_dict(weights, strict=True)
        return merge_lora(model)
    model.load_state_dict(weights, strict=True)
    return model


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    """Trainable and total parameter counts (for the job log)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


__all__ = ["base_model_config", "base_tokenizer_uri", "part_parameters", "add_lora", "merge_lora",
           "prepare_finetune", "merged_export", "trainable_summary", "LORA_TARGETS"]
