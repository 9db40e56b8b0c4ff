"""Bottleneck adapters (Houlsby / Pfeiffer): a small down-project -> nonlinearity -> up-project
module with a residual connection, after the attention output (Houlsby only) and the
feed-forward output of every block. The up-projection starts at zero, so training starts from
the pretrained model exactly. Adapters, layer norms (optional) and the task head train.

Built here rather than with AdapterHub's `adapters`: its 1.3 release pins transformers ~=4.57,
which cannot be installed beside transformers 5 / datasets 5 (pip: ResolutionImpossible).
model/ holds only the trained tensors (adapter_model.safetensors) + llmft.json; llmft eval
rebuilds the base model, inserts the adapters and loads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llmft.core.config import StrategyConfig, choice
from llmft.core.errors import UserError
from llmft.strategies.base import Strategy, set_trainable

WEIGHTS = "adapter_model.safetensors"

# Per architecture: the attention output projection and the feed-forward output projection,
# named relative to one block.
OUTPUT_PROJECTIONS = {
    "bert": ("attention.output.dense", "output.dense"),
    "roberta": ("attention.output.dense", "output.dense"),
    "xlm-roberta": ("attention.output.dense", "output.dense"),
    "electra": ("attention.output.dense", "output.dense"),
    "distilbert": ("attention.out_lin", "ffn.lin2"),
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "mistral": ("self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("self_attn.o_proj", "mlp.down_proj"),
    "gemma": ("self_attn.o_proj", "mlp.down_proj"),
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
}


@dataclass
class AdapterStrategyConfig(StrategyConfig):
    lr: float = 1e-3  # new bottleneck layers (Houlsby et al.: 1e-4..1e-3)
    kind: str = choice("houlsby", "pfeiffer")  # houlsby: after attention and FFN; pfeiffer: after FFN only
    reduction_factor: int = 16  # bottleneck width = hidden size / reduction_factor
    activation: str = choice("relu", "gelu", "silu")
    train_layernorm: bool = True  # Houlsby et al. also train the layer norms
    # Module names inside a block, for architectures not listed in OUTPUT_PROJECTIONS.
    attention_output: Optional[str] = None
    ffn_output: Optional[str] = None


class Adapter(Strategy):
    config = AdapterStrategyConfig
    zero_stages = 2
    zero_note = "its own save reads whole parameters"
    saves_adapter = True

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        s = run_cfg.strategy
        if s.reduction_factor < 1:
            raise UserError(f"strategy.reduction_factor must be >= 1 (got {s.reduction_factor})")

    def apply(self, model):
        insert_adapters(model, dict(self.cfg))
        norm = self.cfg.train_layernorm
        set_trainable(model, lambda name, part: part.kind == "head" or ".adapter." in name
                      or norm and ("norm" in name.lower()) and part.kind != "embeddings")
        return model

    def metadata(self) -> dict:
        from omegaconf import OmegaConf

        return {"adapter": OmegaConf.to_container(self.cfg)}

    def save(self, trainer, model_dir: Path) -> None:
        from safetensors.torch import save_file

        model = trainer.model
        if trainer.is_world_process_zero():
            model_dir.mkdir(parents=True, exist_ok=True)
            trained = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
            save_file(trained, str(model_dir / WEIGHTS))

    @classmethod
    def load_trained(cls, model_dir: Path, task, meta: dict, tokenizer, trust_remote_code: bool = False,
                     **load_kwargs):
        from safetensors.torch import load_file

        from llmft.models.loading import load_model, revision_kwargs

        model = load_model(meta["base_model"], task, tokenizer, trust_remote_code,
                           **revision_kwargs(meta.get("revision")), **load_kwargs)
        insert_adapters(model, meta["adapter"])
        missing = set(load_file(str(model_dir / WEIGHTS))) - set(dict(model.named_parameters()))
        if missing:
            raise UserError(f"model_dir={model_dir}: {WEIGHTS} has tensors the model lacks: {sorted(missing)[:3]}")
        model.load_state_dict(load_file(str(model_dir / WEIGHTS)), strict=False)
        return model


def insert_adapters(model, cfg: dict) -> None:
    """Wrap the output projections of every block with a Bottleneck (in place)."""
    from llmft.models.anatomy import block_stack
    from llmft.models.layers import BottleneckAdapter

    model_type = model.config.model_type
    attention, ffn = OUTPUT_PROJECTIONS.get(model_type, (None, None))
    attention, ffn = cfg.get("attention_output") or attention, cfg.get("ffn_output") or ffn
    if ffn is None or cfg["kind"] == "houlsby" and attention is None:
        raise UserError(
            f"strategy.ffn_output / strategy.attention_output: no adapter positions known for "
            f"model type '{model_type}'; name the output projections inside a block "
            f"(e.g. strategy.attention_output=self_attn.o_proj strategy.ffn_output=mlp.down_proj)"
        )
    targets = [ffn] if cfg["kind"] == "pfeiffer" else [attention, ffn]
    _, blocks = block_stack(model)
    for block in blocks:
        for target in targets:
            parent_name, _, attr = target.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            inner = getattr(parent, attr)
            width = _out_features(inner)
            bottleneck = max(1, width // cfg["reduction_factor"])
            setattr(parent, attr, BottleneckAdapter(inner, width, bottleneck, cfg["activation"]))


def _out_features(module) -> int:
    if hasattr(module, "out_features"):
        return module.out_features
    if hasattr(module, "nf"):  # GPT-2's Conv1D
        return module.nf
    raise UserError(f"strategy: cannot insert an adapter after {type(module).__name__} (not a linear layer)")
