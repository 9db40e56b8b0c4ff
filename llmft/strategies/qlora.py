"""QLoRA: the base model loads in 4-bit NF4 (bitsandbytes), LoRA adapters train on top in
higher precision. bitsandbytes' CPU backend loads and trains 4-bit layers too, so this runs
(slowly) without a GPU. llmft eval reloads the base in 4-bit, as it was trained."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from llmft.core.config import choice
from llmft.core.errors import UserError
from llmft.strategies.lora import LoRA, LoraStrategyConfig


@dataclass
class QLoraStrategyConfig(LoraStrategyConfig):
    quant_type: str = choice("nf4", "fp4")
    double_quant: bool = True  # quantize the quantization constants too
    compute_dtype: str = choice("auto", "fp32", "bf16", "fp16")  # auto: bf16 with hardware.precision=bf16, else fp32
    # Modules kept in full precision: the task heads (they train in full) and BERT's pooler.
    skip_modules: List[str] = field(default_factory=lambda: ["classifier", "score", "pooler"])


class QLoRA(LoRA):
    config = QLoraStrategyConfig
    zero_stages = 2
    zero_note = "4-bit weights are not sharded"
    mergeable = False  # merging into 4-bit weights would round the update away
    quantized_base = True

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        super().validate_config(run_cfg)
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("strategy=qlora needs bitsandbytes: pip install 'llmft[qlora]'")

    def quantization(self) -> dict:
        dtype = self.cfg.compute_dtype
        if dtype == "auto":
            from llmft.runtime.precision import precision

            dtype = "bf16" if precision(self.run_cfg.hardware) == "bf16" else "fp32"
        return {"quant_type": self.cfg.quant_type, "double_quant": self.cfg.double_quant, "compute_dtype": dtype,
                "skip_modules": list(self.cfg.skip_modules)}

    def model_load_kwargs(self) -> dict:
        return self.base_load_kwargs({"quantization": self.quantization()})

    def apply(self, model):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().apply(model)

    def metadata(self) -> dict:
        return {"quantization": self.quantization()}

    @classmethod
    def base_load_kwargs(cls, meta: dict) -> dict:
        import torch
        from transformers import BitsAndBytesConfig

        q = meta["quantization"]
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[q["compute_dtype"]]
        return {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q["quant_type"],
            bnb_4bit_use_double_quant=q["double_quant"], bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=q["skip_modules"],
        )}
