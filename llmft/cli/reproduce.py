"""``llmft reproduce RUN [--allow-changed-data] [overrides]``: rerun a run's recorded config into a
new folder, and say first what differs on this machine from RUN/manifest.json.

The recorded config is RUN/config.yaml (the resolved config: every value, whatever the packaged
config files say today). It is fed to ``llmft train`` as an experiment preset written to a
temporary folder (``experiment=reproduced`` on that search path, ``# @package _global_``), on top
of the run's group choices (RUN/.hydra/hydra.yaml: model, data, strategy, hardware, logger; their
schemas give the config its shape). Overrides typed after RUN apply on top of it. The composed
config is compared with the recorded one before anything runs: a key that differs and was not
typed (one the packaged schema added since) is listed.

Before training: the differences of packages, llmft's version and git commit, Python, hardware
and environment variables are printed; an input file (data file, local model folder, hub
dataset revision) whose digest is not the recorded one is refused in one line, unless
``--allow-changed-data`` (then it is printed loudly). The new run goes to a new timestamped
folder (as ``llmft train`` names one) or ``hydra.run.dir=...``, never RUN or a folder inside
it; its manifest records ``reproduced_from``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from llmft.core.config import flatten
from llmft.core.errors import EXIT_USER_ERROR, UserError

ALLOW = "--allow-changed-data"
GROUPS = ("model", "data", "strategy", "hardware", "logger")  # their choices shape the config (schemas)
PRESET = "reproduced"  # the experiment preset holding the recorded config
USAGE = (f"usage: llmft reproduce RUN [{ALLOW}] [OVERRIDE ...]\n"
         "  rerun RUN's recorded config (RUN/config.yaml) into a new folder (hydra.run.dir=PATH to choose it);\n"
         "  overrides apply on top; what differs on this machine (packages, git commit, hardware, input files)\n"
         f"  is printed first, and a changed input file is refused unless {ALLOW}")


def main(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    try:
        plan = prepare(args)
    except UserError as err:
        print(f"llmft: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    from llmft.runtime.manifest import REPRODUCED_ENV

    try:
        for line in plan["report"]:
            print(f"llmft reproduce: {line}", file=sys.stderr)
        from llmft.cli.app import run

        os.environ[REPRODUCED_ENV] = json.dumps({"run": str(plan["run"]), "overrides": plan["typed"]})
        return run("train", plan["overrides"])
    finally:
        os.environ.pop(REPRODUCED_ENV, None)
        shutil.rmtree(plan["presets"], ignore_errors=True)


def prepare(args: list[str], compare_machine: bool = True) -> dict:
    """Everything up to the run: {"run", "overrides" (for llmft train), "typed", "presets" (the
    temporary folder; the caller removes it), "config" (the composed config), "report" (lines)}.
    Raises UserError for a run that cannot be reproduced as asked."""
    from llmft.cli import normalize_overrides

    positional = [a for a in args if not a.startswith("-")]
    flags = [a for a in args if a.startswith("-")]
    unknown = [f for f in flags if f != ALLOW]
    if unknown:
        raise UserError(f"{unknown[0]}: not an option of llmft reproduce (a single run: no -m); "
                        f"usage: llmft reproduce RUN [{ALLOW}] [OVERRIDE ...]")
    if not positional or "=" in positional[0]:
        raise UserError("llmft reproduce: name the run folder first: llmft reproduce RUN [OVERRIDE ...]")
    run, typed = Path(positional[0]).expanduser(), normalize_overrides(positional[1:], "train")
    recorded, manifest = read_run(run)
    run_dir = next((o.split("=", 1)[1] for o in typed if o.lstrip("+").startswith("hydra.run.dir=")), None)
    named = [] if run_dir else [f"hydra.run.dir=outputs/train/{time.strftime('%Y-%m-%d_%H-%M-%S')}"]
    run_dir = run_dir or named[0].split("=", 1)[1]  # as train names one (configs/train.yaml), fixed to be checked
    new = Path(run_dir).expanduser().resolve()
    if new == run.resolve() or run.resolve() in new.parents:
        raise UserError(f"hydra.run.dir={run_dir}: is {'the run' if new == run.resolve() else 'inside the run'} "
                        f"being reproduced ({run}); name a new folder elsewhere")
    presets = Path(tempfile.mkdtemp(prefix="llmft-reproduce-"))
    try:
        import yaml

        # a group typed after RUN (strategy=lora) replaces that section whole: the option's values, not the run's
        regrouped = [g for g in GROUPS if g in typed_keys(typed)]
        preset = {k: v for k, v in recorded.items() if k not in regrouped}
        (presets / "experiment").mkdir()
        (presets / "experiment" / f"{PRESET}.yaml").write_text(
            f"# @package _global_\n# the resolved config of {run.resolve()}\n"
            + yaml.safe_dump(preset, sort_keys=False, allow_unicode=True), encoding="utf-8")
        choices = [c for c in group_choices(run, recorded) if c.split("=", 1)[0] not in regrouped]
        overrides = [*choices, f"experiment={PRESET}",
                     f"hydra.searchpath=[file://{presets}]",
                     *named, *typed]
        cfg = compose(overrides, run, manifest)
        report = [f"rerunning {run} into {run_dir}"]
        report += config_report(recorded, cfg, typed)
        report += inputs_report(run, manifest, recorded, cfg, typed, ALLOW in flags)
        if compare_machine:
            report += machine_report(manifest, cfg)
    except BaseException:
        shutil.rmtree(presets, ignore_errors=True)
        raise
    return {"run": run.resolve(), "overrides": overrides, "typed": typed, "presets": presets, "config": cfg,
            "report": report}


def read_run(run: Path) -> tuple[dict, dict]:
    """RUN/config.yaml (as plain containers) and RUN/manifest.json; refused when either is missing."""
    import yaml

    from llmft.core.redact import REDACTED
    from llmft.runtime.manifest import MANIFEST, read

    if not run.is_dir():
        raise UserError(f"llmft reproduce {run}: no such run folder")
    config = run / "config.yaml"
    if not config.is_file():
        raise UserError(f"llmft reproduce {run}: no config.yaml in it (not an llmft training run folder)")
    manifest = read(run)
    if manifest is None:
        raise UserError(f"llmft reproduce {run}: no readable {MANIFEST} in it (a run of an llmft that did not write "
                        f"one, or not a training run); rerun its config with llmft train instead")
    try:
        recorded = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"llmft reproduce {run}: config.yaml does not read ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(recorded, dict):
        raise UserError(f"llmft reproduce {run}: config.yaml is not a config")
    hidden = [k for k, v in flatten(recorded).items() if v == REDACTED]
    if hidden:
        raise UserError(f"{hidden[0]}: recorded as {REDACTED} (a secret typed into a config file); give it on the "
                        f"command line as {hidden[0]}='${{oc.env:VAR}}' after the run folder")
    return recorded, manifest


def group_choices(run: Path, recorded: dict) -> list[str]:
    """The run's choice of each config group whose option still exists here (Hydra's record in
    RUN/.hydra/hydra.yaml; the strategy's name when there is none): the options' schemas give the
    config its shape, the preset its values."""
    import yaml

    from llmft.cli.table import config_dir

    choices = {}
    try:
        hydra = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text(encoding="utf-8"))
        choices = dict(hydra["hydra"]["runtime"]["choices"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        pass
    if not isinstance(choices.get("strategy"), str):
        choices["strategy"] = (recorded.get("strategy") or {}).get("name")
    out = []
    for group in GROUPS:
        name = choices.get(group)
        if isinstance(name, str) and re.fullmatch(r"[\w.-]+", name) and \
                (Path(config_dir()) / group / f"{name}.yaml").is_file():
            out.append(f"{group}={name}")
    return out


def compose(overrides: list[str], run: Path, manifest: dict):
    """The config llmft train will run (validated, as its pre-flight does), without Hydra's node.
    A recorded key this llmft's schema lacks is named with the llmft that wrote it."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import open_dict

    from llmft.cli.app import explain, preflight
    from llmft.cli.table import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    try:
        preflight("train", overrides)  # the run's own checks (values, inputs, the new folder), in one line
    except UserError as err:
        lost = re.search(r"In 'experiment/%s'.*full_key: (\S+)" % PRESET, str(err))
        if not lost:
            raise
        made = manifest.get("llmft") or {}
        commit = ((made.get("git") or {}).get("commit") or "")[:12]
        raise UserError(f"{lost.group(1)}: not a key of this llmft's config, but recorded in {run}/config.yaml (written "
                        f"by llmft {made.get('version')}{f' at git commit {commit}' if commit else ''}); run "
                        f"that llmft to reproduce it") from None
    with initialize_config_dir(config_dir(), version_base="1.3", job_name="train"):
        try:
            cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
        except Exception as err:
            raise UserError(explain(err)) from None
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg



def typed_keys(typed: list[str]) -> list[str]:
    return [o.lstrip("+~").split("=", 1)[0] for o in typed]


def _typed(key: str, keys: list[str]) -> bool:
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keys)


def config_report(recorded: dict, cfg, typed: list[str]) -> list[str]:
    """The composed config against the recorded one: the keys typed after RUN, and any other key
    that differs (the recorded config no longer composes to itself: say which)."""
    from llmft.core.redact import redacted

    old, new, keys = flatten(recorded), flatten(redacted(cfg)), typed_keys(typed)
    changed = sorted(k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>"))
    given = [k for k in changed if _typed(k, keys)]
    other = [k for k in changed if k not in given]
    lines = []
    if given:
        lines.append("overridden: " + ", ".join(f"{k} {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}"
                                                for k in given))
    if other:
        lines.append(f"WARNING: the config differs from the recorded one in {len(other)} key(s) not typed here "
                     "(this llmft's schema): " + ", ".join(f"{k} {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}"
                                                          for k in other[:8]))
    return lines


def inputs_report(run: Path, manifest: dict, recorded: dict, cfg, typed: list[str], allow: bool) -> list[str]:
    """The digest of every input the run read against this folder's files: a changed one is
    refused unless allowed (then said loudly); one the overrides point elsewhere is only listed."""
    from llmft.core.digest import input_digests

    before, now, keys = manifest.get("inputs") or {}, input_digests(cfg), typed_keys(typed)
    plain = flatten(recorded)
    changed, moved = [], []
    for key, digest in sorted(before.items()):
        if now.get(key) == digest:
            continue
        name = key.split("#", 1)[0]
        where = plain.get(name, name)
        if _typed(name, keys):
            moved.append(f"{name} (overridden)")
        else:
            changed.append(f"{name} ({where}): {key.split('#', 1)[1]} {digest} -> {now.get(key) or 'missing'}")
    if changed and not allow:
        raise UserError(f"{changed[0]}{f' (+{len(changed) - 1} more)' if len(changed) > 1 else ''}: "
                        f"not what {run} read, so its results cannot be reproduced; restore the file, or pass "
                        f"{ALLOW} to run on what is there now")
    lines = [f"CHANGED INPUT (the results will differ): {c}" for c in changed]
    if moved:
        lines.append("inputs overridden: " + ", ".join(moved))
    if not changed and not moved and before:
        lines.append(f"inputs: the same {len(before)} digest(s) as recorded")
    return lines


def machine_report(manifest: dict, cfg) -> list[str]:
    """What differs on this machine from the manifest (packages, llmft, Python, hardware, environment)."""
    import torch  # noqa: F401  (the run loads it next; its GPUs and CUDA are part of the comparison)

    from llmft.runtime.manifest import build, differences

    here = build(cfg, {"fingerprint": "", "config": {}})
    found = differences(manifest, here)
    if not found:
        return ["this machine matches the manifest (packages, llmft version and commit, Python, hardware, environment)"]
    return [f"differs on this machine: {section}: " + "; ".join(lines) for section, lines in found.items()]
