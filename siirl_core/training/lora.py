"""LoRA adapters through peft: only the adapters train (and are in the optimizer and the
engine checkpoints); the rollout engine and exports get the merged weights under the
base model's own names, W + scaling * B A, computed without touching W."""
from __future__ import annotations

import torch


def apply_lora(module: torch.nn.Module, spec) -> torch.nn.Module:
    """Wrap a causal LM with LoRA adapters (model.lora: rank, alpha, target_modules, dropout)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.target_modules),
                        lora_dropout=spec.dropout, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(module, config)


def has_adapters(module: torch.nn.Module) -> bool:
    return hasattr(module, "peft_config")


def base_name(key: str) -> str:
    """A wrapped model's state-dict key as the base model names it."""
    return key.removeprefix("base_model.model.").replace(".base_layer.", ".")


def merged_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with every active adapter folded into its layer's weight
    (copies; the module is unchanged: merging in place and back would round W)."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer):
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
            deltas[f"{name}.base_layer.weight"] = delta
    out = {}
    with torch.no_grad():
        for key, value in module.state_dict().items():
            if ".lora_" in key:
                continue
            out[base_name(key)] = (value + deltas[key]) if key in deltas else value.detach().clone()
    return out


def save_adapter(module: torch.nn.Module, out_dir: str) -> None:
    """peft's own adapter files (adapter_config.json, adapter_model.safetensors)."""
    module.save_pretrained(out_dir)
