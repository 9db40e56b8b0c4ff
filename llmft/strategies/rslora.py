"""rsLoRA (PEFT): rank-stabilised LoRA, the update scaled by alpha / sqrt(r) (PEFT's use_rslora)."""
from llmft.strategies.lora import LoRA


class RsLoRA(LoRA):  # LoRA's schema and knobs
    rank_stabilized = True
