"""A smaller student initialised from its teacher (``llmft distill ... student.layers=N``).

DistilBERT-style: the student keeps the teacher's embeddings, head and N of its blocks, evenly
spaced from the first to the last (6 of 12: 0, 2, 4, 7, 9, 11), then trains on the teacher's
soft labels plus gold (train.distill). Saved as a standard HF folder, so it loads like any model.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmft.core.errors import UserError


def kept_blocks(total: int, keep: int) -> list[int]:
    if keep >= total:
        raise UserError(f"train.distill.student_layers={keep}: the teacher has {total} blocks; keep fewer")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def init_from_teacher(teacher_dir: Path, task, layers: int, out: Path, trust_remote_code: bool = False) -> Path:
    """Write the student's starting point (fp32, adapters merged) to ``out``; returns ``out``.
    The teacher's code (if any) runs only with the run's model.trust_remote_code=true."""
    from llmft.models.anatomy import block_stack
    from llmft.artifacts import load_saved, read_metadata, require_trust
    from llmft.techniques.retention import plain_model

    meta = read_metadata(teacher_dir)
    require_trust(meta, trust_remote_code, f"train.distill.teacher={teacher_dir}", teacher_dir,
                  "model.trust_remote_code")
    model, tokenizer = load_saved(teacher_dir, task, meta, trust_remote_code=trust_remote_code)
    model = plain_model(model)
    if hasattr(model, "peft_config"):
        raise UserError(f"train.distill.teacher={teacher_dir}: a '{meta.get('strategy')}' adapter does not merge; "
                        f"give the student with student.name_or_path=...")
    name, stack = block_stack(model)
    keep = kept_blocks(len(stack), layers)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], torch.nn.ModuleList([stack[i] for i in keep]))
    for new_index, block in enumerate(getattr(parent, name.rsplit(".", 1)[-1])):
        for module in block.modules():  # decoder caches index their layers
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
