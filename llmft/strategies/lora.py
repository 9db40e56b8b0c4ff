"""LoRA (PEFT): low-rank updates on chosen linear layers; the task head trains in full.

The LoRA knobs (``LoraKnobs``), their checks and the PEFT config built from them live here once:
DoRA and QLoRA subclass LoRA, PET's ``params=lora|dora`` reuses them.

``init`` is PEFT's ``init_lora_weights``. pissa / olora / corda move the top of the weights' SVD
(QR for olora) into A and B and leave the residual in the base; the saved adapter is PEFT's
conversion to a plain LoRA of rank 2r (``path_initial_model_for_weight_conversion``), so it loads
on the untouched base. eva / corda read ``init_batches`` seeded batches of the train split.
``lr_ratio`` is LoRA+: B's learning rate is lr_ratio x A's (an optimizer group).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from llmft.core.config import StrategyConfig, choice
from llmft.core.errors import UserError
from llmft.strategies.base import PeftStrategy, peft_target_error, wrap_peft


@dataclass
class LoraKnobs:
    r: int = 8  # rank of the update
    alpha: float = 16  # scaling: the update is multiplied by alpha / r
    dropout: float = 0.1
    # Module names to adapt; null: PEFT's default for the architecture (BERT: query, value;
    # Llama: q_proj, v_proj). [all-linear] adapts every linear layer but the head.
    target_modules: Optional[List[str]] = None
    # How A and B start (PEFT's init_lora_weights): default (Kaiming-uniform A, B = 0), gaussian,
    # pissa / olora (from the weights' SVD / QR), eva / corda (from a pass over the train split), loftq
    init: str = choice("default", "gaussian", "pissa", "olora", "eva", "loftq", "corda")
    lr_ratio: float = 1.0  # LoRA+: B's learning rate is lr_ratio x A's (lora_plus: 16)
    init_batches: int = 16  # eva / corda: train batches (train.batch_size rows, seeded) their data pass reads


@dataclass
class LoraStrategyConfig(LoraKnobs, StrategyConfig):
    lr: float = 2e-3  # the low-rank update starts at zero and needs a rate ~40x full's
    weight_decay: float = 0.0
    bias: str = choice("none", "all", "lora_only")
    use_dora: bool = False  # weight-decomposed LoRA (see dora)


# The inits that leave W - BA in the base weights (the saved adapter is converted to plain LoRA)
REWRITES_BASE = ("pissa", "olora", "corda")
READS_DATA = ("eva", "corda")
LOFTQ_REFUSAL = ("strategy.init: loftq is not supported: PEFT's LoftQ quantizes on a CUDA/XPU device with "
                 "bitsandbytes and its adapter pairs with that quantized base, which llmft does not save; "
                 "use init=pissa (or strategy=qlora)")


def check_lora_knobs(s) -> None:
    if s.init == "loftq":
        raise UserError(LOFTQ_REFUSAL)
    if not s.lr_ratio > 0:
        raise UserError(f"strategy.lr_ratio must be > 0 (got {s.lr_ratio}; LoRA+ trains B at lr_ratio x A's rate, "
                        f"e.g. 16)")
    if s.init_batches < 1:
        raise UserError(f"strategy.init_batches must be >= 1 (got {s.init_batches})")
    import importlib.util

    if s.init == "corda" and importlib.util.find_spec("attr") is None:  # PEFT's CorDA module imports it, undeclared
        raise UserError("strategy.init=corda needs the attrs package (PEFT's CorDA imports it): pip install attrs")
    if s.r < 1:
        raise UserError(f"strategy.r must be >= 1 (got {s.r})")
    if not s.alpha > 0:  # the update is scaled by alpha / r: 0 trains an adapter that does nothing
        raise UserError(f"strategy.alpha must be > 0 (got {s.alpha}; the update is scaled by alpha / r, "
                        f"e.g. strategy.alpha={2 * s.r})")
    if not 0 <= s.dropout < 1:
        raise UserError(f"strategy.dropout must be in [0, 1) (got {s.dropout})")


def lora_config(s, task_type: str | None, use_dora: bool, bias: str = "none", use_rslora: bool = False):
    """PEFT's LoraConfig from the LoRA knobs of a strategy section."""
    from peft import LoraConfig

    from peft.tuners.lora.config import CordaConfig, EvaConfig

    init = s.init
    return LoraConfig(task_type=task_type, r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout,
                      target_modules=target_modules(s.target_modules), bias=bias, use_dora=use_dora,
                      use_rslora=use_rslora, init_lora_weights=True if init == "default" else init,
                      eva_config=EvaConfig() if init == "eva" else None,
                      corda_config=CordaConfig() if init == "corda" else None)


class LoRA(PeftStrategy):
    config = LoraStrategyConfig
    mergeable = True
    rank_stabilized = False  # the update scaled by alpha / sqrt(r) instead of alpha / r (rslora)

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        s = run_cfg.strategy
        check_lora_knobs(s)
        if s.init in REWRITES_BASE:
            if s.use_dora:  # the conversion is dW = AB - A0B0; DoRA's magnitude rescaling is not linear in it
                raise UserError(f"strategy.init: {s.init} does not compose with DoRA (its saved adapter is "
                                f"converted to plain LoRA as AB - A0B0, which DoRA's magnitude breaks); "
                                f"use strategy=lora or init=eva|gaussian")
            if cls.quantized_base:
                raise UserError(f"strategy.init: {s.init} rewrites the base weights, which a 4-bit base cannot "
                                f"hold exactly; use strategy=lora, or init=eva|gaussian with qlora")
        if s.init not in ("default", "gaussian") and run_cfg.hardware.zero_stage == 3:
            raise UserError(f"hardware.zero_stage: strategy.init={s.init} reads or rewrites whole base weights, "
                            f"which ZeRO-3 shards; use zero_stage 2 or init=default|gaussian")

    def peft_config(self):
        return lora_config(self.cfg, self.task.peft_task_type, self.cfg.use_dora, self.cfg.bias, self.rank_stabilized)

    def prepare_data(self, splits: dict, tokenizer) -> dict:
        self._init_data = (splits.get("train"), tokenizer) if self.cfg.init in READS_DATA else None
        return splits

    def apply(self, model):
        init, config = self.cfg.init, self.peft_config()
        if init == "corda":
            from peft.tuners.lora.corda import preprocess_corda

            batches = self.init_batches(model, per_forward=1)  # CorDA's hook takes one unpadded row a call
            preprocess_corda(model, resolved_targets(config, model), run_model=lambda: run_batches(model, batches))
        peft = wrap_peft(model, config)
        if init == "eva":
            eva_init(peft, self.init_batches(model), self.cfg.init_batches)
        self._initial = None
        if init in REWRITES_BASE:  # the adapter as initialised: PEFT's conversion at save subtracts it
            self._initial = tempfile.TemporaryDirectory(prefix="llmft-lora-init-")
            peft.save_pretrained(str(Path(self._initial.name) / "initial"))
        return peft

    def init_batches(self, model, per_forward: int | None = None) -> list[dict]:
        """``init_batches`` x train.batch_size rows of the train split (a seeded sample), tokenized
        and collated as training does (``per_forward`` rows a batch), on the model's device. Labels
        dropped: the pass only reads layer inputs (classification labels are one per row, not per
        token as EVA's label mask expects)."""
        rows, tokenizer = self._init_data
        take = self.run_cfg.train.batch_size * self.cfg.init_batches
        size = per_forward or self.run_cfg.train.batch_size
        # a train split smaller than that is read again (EVA compares successive batches' components)
        order = [i % len(rows) for i in range(take)]
        sample = self.task.tokenize(rows.shuffle(seed=self.run_cfg.seed).select(order), tokenizer)
        collate = self.task.collator(tokenizer)
        device = next(model.parameters()).device
        out = []
        for start in range(0, take, size):
            batch = collate([sample[i] for i in range(start, min(start + size, take))])
            out.append({k: v.to(device) for k, v in batch.items() if k != "labels" and hasattr(v, "to")})
        return out

    def param_groups(self, model):
        return lora_plus_groups(model, self.cfg.lr_ratio)

    def save(self, trainer, model_dir: Path) -> None:
        super().save(trainer, model_dir)
        if getattr(self, "_initial", None) is not None and trainer.is_world_process_zero():
            save_converted(trainer.model, model_dir, Path(self._initial.name) / "initial")


def resolved_targets(config, model):
    """The config with target_modules as get_peft_model resolves them (the architecture's default,
    all-linear expanded): preprocess_corda runs before it and matches the names as given."""
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if config.target_modules is None:
        names = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model.config.model_type)
        if names is None:
            raise peft_target_error(ValueError("target_modules"), model)
        config.target_modules = set(names)
    return _maybe_include_all_linear_layers(config, model)


def run_batches(model, batches: list[dict]) -> None:
    import torch

    training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    model.train(training)


def eva_init(peft, batches: list[dict], n: int) -> None:
    """PEFT's EVA on ``batches``; its error when the SVD has not converged as one line. Every rank
    reads the same batches, so nothing is gathered across ranks."""
    from peft import initialize_lora_eva_weights

    try:
        initialize_lora_eva_weights(peft, dataloader=batches, show_progress_bar=False,
                                    gather_distributed_inputs=False)
    except ValueError as err:
        if "converged" not in str(err) and "empty" not in str(err):
            raise
        raise UserError(f"strategy.init_batches: EVA's SVD did not converge on {n} train batches; raise "
                        f"strategy.init_batches (or train.batch_size)") from None


def save_converted(peft, model_dir: Path, initial: Path) -> None:
    """Overwrite the saved adapter with PEFT's conversion to plain LoRA (rank 2r: [A | A0], [B | -B0]),
    which applies to the original base weights. PEFT's conversion keeps only lora_A / lora_B: the
    other trained tensors (the task head) are put back from the adapter's own state dict."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    peft.save_pretrained(str(model_dir), path_initial_model_for_weight_conversion=str(initial))
    path = model_dir / "adapter_model.safetensors"
    converted = load_file(str(path))
    for name, tensor in get_peft_model_state_dict(peft).items():
        converted.setdefault(name, tensor.detach().cpu().contiguous())
    save_file(converted, str(path), metadata={"format": "pt"})


def lora_plus_groups(model, ratio: float) -> list[dict] | None:
    """LoRA+: lora_B / lora_embedding_B at ratio x the rate, every other trainable parameter (A, the
    head, biases) at 1x. PEFT's create_loraplus_optimizer also moves every 1-D tensor (biases,
    the head's bias) to B's rate and LoRA embeddings to a fixed 1e-6: here only B changes."""
    if ratio == 1:
        return None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    b = [n for n in trainable if ".lora_B." in n or ".lora_embedding_B." in n]
    rest = [n for n in trainable if n not in set(b)]
    return [{"name": "lora_A_and_head", "params": rest, "lr_scale": 1.0},
            {"name": "lora_B", "params": b, "lr_scale": float(ratio)}]


def target_modules(names):
    """Config list -> PEFT's argument: None (PEFT's default), a list, or "all-linear"."""
    if names is None:
        return None
    names = list(names)
    return "all-linear" if names == ["all-linear"] else names
