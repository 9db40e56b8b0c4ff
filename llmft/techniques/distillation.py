"""Knowledge distillation (``train.distill``, ``llmft distill``): a student learns from a trained
teacher's soft labels (the loss term is in objective.py) and, with ``student_layers=N``, starts as
N of the teacher's blocks.

DistilBERT-style student: the teacher's embeddings, head and N of its blocks, evenly spaced from
the first to the last (6 of 12: 0, 2, 4, 7, 9, 11). Saved as a standard HF folder under the run
(student_init/), so it loads like any model.
"""
from __future__ import annotations

from pathlib import Path

from llmft.core.errors import UserError, require
from llmft.tasks import tasks_that
from llmft.techniques import Technique


class Distillation(Technique):
    """The student's starting point; its loss term is objective.py's."""

    keys = ("train.distill",)

    def validate(self, cfg, task, strategy) -> None:
        d = cfg.train.distill
        if not d.teacher:
            require(d.student_layers == 0, "train.distill.student_layers",
                    "builds a student from a teacher's blocks: add train.distill.teacher=RUN/model "
                    "(or use llmft distill)")
            return
        require(task.logits is not None, "train.distill.teacher",
                f"distillation covers {tasks_that(lambda t: t.logits is not None)} (got data.task={cfg.data.task})")
        require(Path(d.teacher).exists(), "train.distill.teacher", f"not found: {d.teacher}")
        require(d.temperature > 0, "train.distill.temperature", "must be > 0")
        require(0 <= d.alpha <= 1, "train.distill.alpha", f"must be in [0, 1] (got {d.alpha})")
        require(d.student_layers >= 0, "train.distill.student_layers", "must be >= 0")
        per_example = lambda t: t.logits in ("sequence", "token")  # noqa: E731
        require(not d.cache or per_example(task), "train.distill.cache",
                f"caches per-example logits for {tasks_that(per_example)}; a causal LM's are vocabulary-sized")
        require(not cfg.model.crf, "train.distill.teacher",
                "does not combine with model.crf=true (distillation replaces the CRF's loss, so the transitions "
                "would not train)")

    def source(self, run) -> None:
        """student_layers > 0: the run trains a student built from the teacher's blocks under
        ``<run>/student_init``."""
        d = run.cfg.train.distill
        if d.student_layers > 0:
            run.source = str(init_from_teacher(teacher_dir(d.teacher), run.task, d.student_layers,
                                               Path(run.dir.path) / "student_init", run.cfg.model.trust_remote_code))


technique = Distillation()


def kept_blocks(total: int, keep: int) -> list[int]:
    if keep >= total:
        raise UserError(f"train.distill.student_layers={keep}: the teacher has {total} blocks; keep fewer")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def init_from_teacher(teacher_dir: Path, task, layers: int, out: Path, trust_remote_code: bool = False) -> Path:
    """Write the student's starting point (fp32, adapters merged) to ``out``; returns ``out``.
    The teacher's code (if any) runs only with the run's model.trust_remote_code=true."""
    import torch

    from llmft.models.anatomy import block_stack
    from llmft.artifacts import load_saved, read_metadata, require_trust
    from llmft.artifacts import plain_model

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


def load_teacher(path: str, task, tokenizer, trust_remote_code: bool = False):
    """A trained model/ folder (or the run folder holding it), checked against the student's
    labels and tokenizer, frozen, in eval mode. Its code (if any) runs only with the run's
    model.trust_remote_code=true."""
    from llmft.core.errors import UserError
    from llmft.artifacts import load_saved, read_metadata, require_trust

    model_dir = teacher_dir(path)
    meta = read_metadata(model_dir)
    require_trust(meta, trust_remote_code, f"train.distill.teacher={path}", model_dir, "model.trust_remote_code")
    if meta.get("task") != task.name:
        raise UserError(f"train.distill.teacher={path}: a {meta.get('task')} model; this run is {task.name}")
    if task.labels is not None and list(meta.get("labels") or []) != list(task.labels):
        raise UserError(f"train.distill.teacher={path}: its labels {meta.get('labels')} differ from this run's "
                        f"{list(task.labels)}")
    teacher, teacher_tokenizer = load_saved(model_dir, task, meta, trust_remote_code=trust_remote_code)
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"train.distill.teacher={path}: its tokenizer differs from the student's; distillation "
                        f"compares logits token by token, so both need the same tokenizer")
    teacher.requires_grad_(False)
    return teacher.eval()


def teacher_dir(path: str):
    """A teacher given as a run folder means its model/."""
    from pathlib import Path

    model_dir = Path(path)
    return model_dir / "model" if (model_dir / "model").is_dir() else model_dir
