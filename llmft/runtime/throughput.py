"""What the training run got out of the machine: tokens per second, the share of the processed
tokens that were real (not padding), and model FLOPs utilisation (MFU).

MFU = model FLOPs on the real tokens per second / the device's peak FLOP/s. Model FLOPs count the
matmuls (every ``nn.Linear``: 2 x weights per token forward) and attention's two length-squared
products (4 x hidden x length per token per layer, forward); training adds the backward: inputs'
gradients (as much as the forward) and the weight gradients of the trainable matmuls (as much
again for those only; 6 x params for full fine-tuning, ~4 x for LoRA, whose frozen weights need
none). Padding is not counted: it is work, not model FLOPs.

The peak is measured once per machine, dtype and thread count with a matmul probe and cached
under $LLMFT_CACHE (a datasheet figure the CPU does not reach would understate MFU's meaning);
known GPUs use their dense datasheet peak."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from llmft.core.paths import cache_root

# dense (no sparsity) datasheet peaks, FLOP/s: bf16/fp16 tensor cores; fp32 as TF32 tensor cores
GPU_PEAKS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 183e12},
    "A10G": {"bf16": 70e12, "fp16": 70e12, "fp32": 35e12},
}


class TokenCounter:
    """Real and processed (padded) tokens of the batches this process trained on, and the sum of
    squared sequence lengths (attention's cost)."""

    def __init__(self):
        self.processed = 0
        self._real = self._squares = 0  # tensors once counting starts: summed on the device, no sync per step

    def add(self, inputs: dict) -> None:
        ids = inputs.get("input_ids")
        if ids is None:
            return
        self.processed += ids.numel()
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            lengths = mask.sum(1)
        elif inputs.get("position_ids") is not None:  # packed rows: a sequence starts at position 0
            lengths = packed_lengths(inputs["position_ids"])
        else:
            lengths = ids.new_full((ids.shape[0],), ids.shape[-1])
        self._real = self._real + lengths.sum()
        self._squares = self._squares + (lengths.double() ** 2).sum()

    @property
    def real(self) -> int:
        return int(self._real)

    @property
    def squares(self) -> int:
        return int(self._squares)

    @property
    def real_fraction(self) -> float | None:
        return self.real / self.processed if self.processed else None


def packed_lengths(position_ids):
    """The lengths of the sequences packed into rows whose positions restart at 0 for each."""
    import torch

    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).reshape(-1).tolist() + [flat.numel()]
    return torch.tensor([b - a for a, b in zip(starts, starts[1:]) if b > a], device=position_ids.device)


def model_shape(model) -> dict:
    """Matmul weights (all, trainable), transformer layers and width: what model FLOPs depend on."""
    import torch

    linear = trainable = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            size = getattr(module.weight, "ds_numel", None) or module.weight.numel()  # ZeRO-3 shards it
            linear += size
            trainable += size if module.weight.requires_grad else 0
    config = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)  # wrappers
    config = getattr(config, "text_config", None) or config
    return {"linear": linear, "trainable_linear": trainable,
            "encoder_decoder": bool(getattr(config, "is_encoder_decoder", False)),
            "layers": int(getattr(config, "num_hidden_layers", 0) or 0),
            "hidden": int(getattr(config, "hidden_size", 0) or 0)}


def training_flops(shape: dict, counter: TokenCounter) -> float:
    """Model FLOPs of the training steps counted (forward + backward), real tokens only."""
    forward = 2 * shape["linear"] * counter.real + 4 * shape["layers"] * shape["hidden"] * counter.squares
    weight_grads = 2 * shape["trainable_linear"] * counter.real
    return 2 * forward + weight_grads


def peak_flops(device: str, dtype: str) -> tuple[float, str]:
    """(FLOP/s, where it comes from) of one process on ``device`` ("cpu" or "cuda") in ``dtype``."""
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, peaks in GPU_PEAKS.items():
            if key in name and dtype in peaks:
                return peaks[dtype], f"{name} datasheet ({dtype}, dense)"
    threads = torch.get_num_threads()
    key = f"{device_name(device)}|{dtype}|{threads} threads|torch {torch.__version__}"
    path = cache_root() / "peak_flops.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = matmul_probe(device, dtype)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(cache, indent=1))
            tmp.replace(path)
        except OSError:  # an unwritable cache costs the next run the probe again, never this run's results
            return cache[key], f"measured: {key} (matmul probe; {path} not writable)"
    return cache[key], f"measured: {key} (matmul probe, cached in {path})"


def device_name(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def matmul_probe(device: str, dtype: str, n: int = 1024, seconds: float = 0.5) -> float:
    """The best FLOP/s of square n x n matmuls over ~``seconds`` (after a warm-up)."""
    import torch

    kind = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=device, dtype=kind)
    b = torch.randn(n, n, device=device, dtype=kind)
    best, deadline = 0.0, time.perf_counter() + seconds
    for i in range(1000):
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first is the warm-up
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
        if i > 2 and time.perf_counter() > deadline:
            break
    return best


def summary(model, counter: TokenCounter, runtime_s: float, device: str, dtype: str) -> dict:
    """results.json["train"]'s throughput figures for this process."""
    if not counter.processed or runtime_s <= 0:
        return {}
    shape = model_shape(model)
    if shape["encoder_decoder"]:  # the decoder's tokens are not the inputs counted here: no MFU to defend
        return {"real_token_fraction": round(counter.real_fraction, 4)}
    achieved = training_flops(shape, counter) / runtime_s
    peak, source = peak_flops(device, dtype)
    return {
        "real_token_fraction": round(counter.real_fraction, 4),
        "model_flops_per_s": float(f"{achieved:.4g}"),
        "peak_flops_per_s": float(f"{peak:.4g}"),
        "peak_source": source,
        "mfu": round(achieved / peak, 4) if peak else None,
    }
