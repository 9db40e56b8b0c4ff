"""What a training run's folder holds: the one list that the run folder (run_dir.py), the ownership
checks (ownership.py), ``llmft report`` and a takeover of the folder by another config read.

    config.yaml         the resolved config (Hydra's own composed config is in .hydra/)
    metrics.jsonl       one line per logged training step, whatever the logger
    predictions.jsonl   one line per eval example: input, gold label, prediction
    deepspeed.json      the DeepSpeed config the hardware group rendered (ZeRO runs)
    results.json        the run's record (runtime/results.py: its schema); written last,
                        atomically: a run without it did not complete
    model/              the trained model or adapter; written to a temp folder and renamed, so a
                        model/ that exists is complete
    checkpoints/        checkpoint-N every train.save_steps (a rerun in this folder resumes
                        from the newest complete one)
    stages/<name>/      a staged run's stages (self-training rounds, PET's patterns), each a
                        whole run folder of its own
    soft_labels.jsonl   PET's ensemble's class distributions for the unlabelled rows (what its
                        final classifier trained on)
    student_init/       distillation's student built from the teacher's blocks
    augmented.jsonl     the rows data.augment added to the train split (data.augment.write=true)
    retention.png       weight drift per layer (train.retention)
    manifest.json       what reproduces the run: llmft version and git commit (+ diff), Python and
                        package versions, hardware, seeds, the digest of every data file
                        (``llmft reproduce RUN`` reads it)
    wandb_run_id        the wandb run a resumed run logs into
    mlflow_run_id       the MLflow run a resumed run logs into (logger=mlflow)
    tensorboard/        TensorBoard's event files (logger=tensorboard)
    mlruns/             MLflow's local file store (logger=mlflow without logger.mlflow.tracking_uri)
    metrics.csv         one row per logged step (logger=csv)
    <format>/           ``llmft export`` of model/ (its default output_dir: RUN/<format>, e.g.
                        merged/, bf16/, onnx/), and ``llmft prune``'s pruned model: every such
                        folder holds .llmft-export
    replaced/<time>/    what an earlier run of another config left here (train.resume=never, or
                        a rerun with other values): moved aside, never deleted
    .llmft.lock         held while a run writes here (a second run into the folder is refused)
    .llmft-run          which command's folder this is (ownership.py)

Everything from config.yaml to the export folders is the run's output (``artifacts``): a run of
another config (or train.resume=never) moves all of it to replaced/<time>/ before writing, so
nothing left behind describes or derives from a model that is no longer there. Torch-free.
"""
from __future__ import annotations

import os
from pathlib import Path

EXPORT_MARKER = ".llmft-export"  # in every folder llmft export wrote (commands/export.py writes it)
# the formats llmft exported before exports carried the marker, each by default to RUN/<format>/
EXPORT_FOLDERS = ("merged", "bf16", "fp16", "int8", "onnx", "onnx-int8")
# written only by a training run: a folder holding one of them is a training run's
TRAINING_ONLY = ("model", "checkpoints", "stages", "soft_labels.jsonl", "student_init", "retention.png",
                 "augmented.jsonl")
# a run's output: set aside as a whole when another config takes the folder over
ARTIFACTS = ("results.json", "predictions.jsonl", "metrics.jsonl", "config.yaml", "deepspeed.json",
             "manifest.json", *TRAINING_ONLY, "wandb_run_id", "mlflow_run_id", "tensorboard", "mlruns",
             "metrics.csv", *EXPORT_FOLDERS)
# what a staged run writes before its last stage takes the folder (they are that run's own)
STAGED_OUTPUTS = ("stages", "soft_labels.jsonl")
# folders inside a run that hold no run of their own (``llmft report`` skips what is under them)
NOT_RUNS = ("model", "checkpoints", "stages", "replaced")


def artifacts(folder: str | Path) -> list[str]:
    """The names in ``folder`` that are a run's output: ARTIFACTS, and any export folder in it
    (it holds EXPORT_MARKER: a format added since is caught without a new name here)."""
    folder = Path(folder)
    present = [name for name in ARTIFACTS if os.path.lexists(folder / name)]
    exports = sorted(p.name for p in folder.iterdir() if p.name not in present and p.is_dir()
                     and not p.is_symlink() and (p / EXPORT_MARKER).is_file()) if folder.is_dir() else []
    return present + exports
