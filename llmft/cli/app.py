"""Hydra integration: find the config tree, check overrides up front, run the command.

Before Hydra starts a run (or a sweep, or a SLURM submission), every combination of the given
overrides is composed and validated once with Hydra's compose API, so a wrong key, type, value
or group option fails in one line with exit code 2 and no run folder is created.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
from pathlib import Path

from llmft.cli.table import COMMANDS, config_dir, config_name
from llmft.core.errors import EXIT_USER_ERROR, UserError, require
from llmft.runtime.ownership import check_run_folder
from llmft.runtime.run_lock import check_unlocked, is_lock_holder, run_lock

# Hydra flags that take a value (the next argument is not an override).
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}
_PLUGIN_HINTS = {
    "hydra/launcher": " (SLURM: pip install 'llmft[slurm]')",
    "hydra/sweeper": " (Optuna: pip install 'llmft[sweep]')",
}
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc"}


def fail(err: UserError) -> None:
    print(f"llmft: error: {err}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def run(command: str, args: list[str]) -> int:
    from llmft.runtime.preemption import PREEMPTION, Interrupted

    PREEMPTION.install(command, COMMANDS[command].trains)  # first: SIGTERM/SIGUSR2 at any moment from here
    try:
        return _run(command, args)
    except Interrupted as err:  # before or after Hydra's job (inside it, entry stops the same way)
        PREEMPTION.stop(err)


def _run(command: str, args: list[str]) -> int:
    from llmft.cli.validate import register_configs

    if "LOCAL_RANK" in os.environ:  # a rank: it dies with the llmft that spawned it
        from llmft.runtime.distributed import die_with_spawner

        die_with_spawner()
    register_configs()
    typed = overrides_of(args)  # what this command line says, as opposed to a config file
    try:
        check_typed_secrets(typed)
    except UserError as err:
        fail(err)
    if not any(a in _INFO_FLAGS for a in args):
        try:
            preflight(command, typed, sweep="-m" in args or "--multirun" in args, config_dir_arg=config_dir_of(args))
        except UserError as err:
            fail(err)

    import hydra

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name(command))
    def entry(cfg):
        from hydra.core.hydra_config import HydraConfig

        from llmft.runtime.preemption import PREEMPTION, Interrupted
        from llmft.runtime.run_dir import Preempted

        hydra_cfg = HydraConfig.get()
        try:
            PREEMPTION.begin(command, COMMANDS[command].trains)  # a SLURM launcher's job starts here, not in run()
            check_trust(command, cfg, typed)  # again: a primary config of --config-name preflight did not compose
            cfg = prepare_config(command, cfg, list(hydra_cfg.overrides.task))
            from llmft.cli.validate import validate

            validate(cfg, command)
            scrub_hydra_files(cfg, hydra_cfg)
            run_dir = hydra_cfg.runtime.output_dir
            with run_lock(run_dir, cfg.hardware.lock):  # one llmft writes a run folder at a time
                if is_lock_holder(run_dir):  # again under the lock: a sweep's folders, or a change since
                    from llmft.runtime.ownership import check_run_folder, mark_run_folder

                    check_run_folder(run_dir, command, hydra_files=(f"{hydra_cfg.job.name}.log",))
                    mark_run_folder(run_dir, command)
                if COMMANDS[command].trains:
                    from llmft.cli.launch import train

                    # the ranks compose what this process did: its task overrides and any searched config folder
                    searched = [o for o in hydra_cfg.overrides.hydra if o.startswith("hydra.searchpath=")]
                    value = train(command, cfg, run_dir, [*hydra_cfg.overrides.task, *searched],
                                  str(hydra_cfg.mode) == "RunMode.MULTIRUN")
                else:
                    value = importlib.import_module(f"llmft.commands.{COMMANDS[command].module}").main(cfg, run_dir)
            PREEMPTION.completed()  # a signal held while the run finished: said, never requeued
            return value
        except UserError as err:
            fail(err)
        except Preempted as err:  # a checkpoint is saved: the rerun (or the requeued job) resumes
            print(f"llmft: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
        except Interrupted as err:  # outside the training loop: one line, requeue (SLURM USR2), exit
            PREEMPTION.stop(err)

    if "LOCAL_RANK" in os.environ and int(os.environ.get("RANK", "0")) > 0:
        args = [*args, "hydra.output_subdir=null", "hydra/job_logging=none"]  # rank 0 writes the folder
    sys.argv = [f"llmft-{command}", *args]
    entry()
    return 0


def check_search(cfg) -> None:
    """An optimizing sweeper selects on the validation split: refuse a config that has none."""
    sweeper = str(cfg.hydra.sweeper.get("_target_", ""))
    if "optuna" not in sweeper.lower() or "data" not in cfg:
        return
    d = cfg.data
    if d.validation_fraction == 0 and not d.validation_file and d.source == "files":
        raise UserError("hparams_search: selects on the validation split and this data config has none; "
                        "set data.validation_fraction=0.1 (carved from train) or data.validation_file=PATH")


def overrides_of(args: list[str]) -> list[str]:
    overrides, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in _VALUE_FLAGS
        else:
            overrides.append(arg)
    return overrides


def preflight(command: str, overrides: list[str], sweep: bool = False, config_dir_arg: str | None = None) -> None:
    """Compose and validate every sweep value once; raise UserError on the first problem (a run
    folder in use by another llmft included, before Hydra writes into it). ``config_dir_arg``:
    --config-dir's folder, searched as Hydra searches it."""
    for _ in composed(command, overrides, sweep, config_dir_arg):
        pass


def composed(command: str, overrides: list[str], sweep: bool = False, config_dir_arg: str | None = None,
             every_point: bool = False, warnings: list | None = None):
    """Yield (overrides, config with its ``hydra`` node, validated run config) per combination, each
    checked as preflight checks it. ``every_point``: every point of the sweep (llmft check), not
    only each value once; ``warnings``: collects what check only warns about (no sbatch here)."""
    import copy

    from hydra import compose, initialize_config_dir

    from llmft.cli.validate import validate

    from omegaconf import open_dict

    for index, combo in enumerate(_combinations(overrides, product=every_point)):
        with initialize_config_dir(config_dir(), version_base="1.3", job_name=command):
            try:
                cfg = compose(config_name(command), overrides=[*combo, *_search_path(config_dir_arg, combo)],
                              return_hydra_config=True)
                # a config may make the run a sweep itself (hparams_search=optuna sets hydra.mode)
                sweep = sweep or str(cfg.hydra.mode) == "RunMode.MULTIRUN"
                if index == 0 and not sweep:
                    check_no_sweep(overrides)
                check_trust(command, cfg, overrides)
                launcher = cfg.hydra.launcher
                check_launcher(launcher, warnings)
                check_search(cfg)
                check_creatable(cfg.hydra.sweep.dir if sweep else cfg.hydra.run.dir,
                                "hydra.sweep.dir" if sweep else "hydra.run.dir")
                if not sweep:
                    check_inputs_outside(command, cfg, cfg.hydra.run.dir)
                if not sweep and is_lock_holder(cfg.hydra.run.dir):
                    check_unlocked(cfg.hydra.run.dir, cfg.hardware.lock)
                    check_run_folder(cfg.hydra.run.dir, command)  # only new, empty or its own kind of llmft folder
            except UserError:
                raise
            except Exception as err:  # Hydra's and OmegaConf's composition errors
                raise UserError(explain(err, combo)) from None
        with_hydra = copy.deepcopy(cfg) if every_point else None
        with open_dict(cfg):
            del cfg["hydra"]
        run_cfg = prepare_config(command, cfg, combo)
        validate(run_cfg, command)
        yield combo, with_hydra, run_cfg


def check_creatable(folder: str, key: str) -> None:
    """The run folder exists as a folder, or can be made: its nearest existing parent is a folder
    this user may write in (else Hydra fails with a traceback when it makes it)."""
    path, key = Path(folder).expanduser().absolute(), f"{key}={folder}"
    if path.exists():
        require(path.is_dir(), key, "is a file; name a new folder for the run")
        require(os.access(path, os.W_OK | os.X_OK), key, "no permission to write in it; name another folder")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    require(parent.is_dir(), key, f"cannot be made: {parent} is a file; name a folder elsewhere")
    require(os.access(parent, os.W_OK | os.X_OK), key,
            f"cannot be made: no permission to write in {parent}; name a folder elsewhere")


def check_inputs_outside(command: str, cfg, run_dir: str) -> None:
    """A training run rearranges its folder (an earlier config's model/ and checkpoints are moved
    aside), so the model it starts from (or its teacher) may not live there."""
    if not COMMANDS[command].trains or "model" not in cfg:
        return
    from omegaconf import OmegaConf

    run = Path(run_dir).expanduser().resolve()
    for key in ("model.name_or_path", "train.distill.teacher"):
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:  # an interpolation that does not resolve: validate() names it
            continue
        if not value or not Path(str(value)).expanduser().exists():
            continue
        source = Path(str(value)).expanduser().resolve()
        inside = source == run or run in source.parents
        require(not inside or (run / "replaced") in (source, *source.parents), key,
                f"{value} is inside the run folder {run_dir}, which this run rearranges (an earlier run's model/ "
                f"and checkpoints are moved aside); copy it out of there, or use another hydra.run.dir")


def check_no_sweep(overrides: list[str]) -> None:
    """A list of values (``key=a,b``, ``choice(...)``, ``range(...)``) without -m: Hydra refuses it
    in several lines; say which override and both ways out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:
        raise UserError(explain(err)) from None
    for override, text in zip(parsed, overrides):
        if override.is_sweep_override():
            key = text.split("=", 1)[0]
            raise UserError(f"{text}: several values make a sweep: add -m to run one job per value, or give one "
                            f"value (a list value is written in brackets: {key}=[a,b])")


def config_dir_of(args: list[str]) -> str | None:
    """The folder of ``--config-dir DIR`` / ``-cd DIR`` / ``--config-dir=DIR``, if given."""
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config-dir="):
            return arg.split("=", 1)[1]
    return None


def _search_path(folder: str | None, combo: list[str]) -> list[str]:
    """--config-dir as an override for the compose API (which has no such flag), so its presets
    compose here as they will in the run."""
    if folder is None or any(o.lstrip("+").startswith("hydra.searchpath=") for o in combo):
        return []
    if not Path(folder).is_dir():
        raise UserError(f"--config-dir {folder}: no such folder")
    return [f"hydra.searchpath=[file://{Path(folder).resolve()}]"]


def trust_key(command: str) -> str:
    return "trust_remote_code" if COMMANDS[command].loads_saved else "model.trust_remote_code"


def check_trust(command: str, cfg, typed: list[str]) -> None:
    """trust_remote_code runs the model's own code: it counts only when typed on the command line,
    never from a config file (an experiment preset, a model yaml, a shared --config-dir), where
    nobody running the command may have read it."""
    from omegaconf import OmegaConf

    key = trust_key(command)
    if OmegaConf.select(cfg, key, default=False) is not True:
        return
    if any(not o.startswith("~") and o.lstrip("+").split("=", 1)[0] == key for o in typed):
        return
    raise UserError(f"{key}: set to true by a config file, not on the command line; a model's own code runs "
                    f"only when asked there: type {key}=true (read the model's code first)")


def check_typed_secrets(typed: list[str]) -> None:
    """A token typed as a value is recorded in the run folder's .hydra/ files, by the tracker and in
    Hydra's error messages: refused, pointing at ${oc.env:...} (see core/redact.py)."""
    from llmft.core.redact import typed_secret

    for override in typed:
        key, sep, value = override.partition("=")
        found = typed_secret(key.lstrip("+~"), value) if sep else None
        if found:
            kind, variable = found
            raise UserError(f"{key.lstrip('+~')}: the value typed looks like {kind}; a value on the command line "
                            f"is recorded in the run folder's .hydra/ files, by the tracker and in error "
                            f"messages: export it and write {key.lstrip('+~')}='${{oc.env:{variable}}}'")


def scrub_hydra_files(cfg, hydra_cfg) -> None:
    """The secrets of this config (values read from the environment, the tokens the libraries
    read) out of what Hydra saved in .hydra/ before the command started."""
    from llmft.core.redact import scrub_files, secret_values

    if hydra_cfg.output_subdir is not None:
        scrub_files(Path(hydra_cfg.runtime.output_dir) / str(hydra_cfg.output_subdir), secret_values(cfg))


def check_launcher(launcher, warnings: list | None = None) -> None:
    """A SLURM launcher's settings against the cluster, before anything is submitted. ``warnings``
    given (llmft check): no sbatch here is said there, not refused (the partition goes unchecked)."""
    import shutil
    import subprocess

    if "Slurm" not in str(launcher.get("_target_", "")):
        return
    if shutil.which("sbatch") is None:
        message = ("hydra/launcher=slurm: sbatch is not on PATH; run on a SLURM login node "
                   "(or start a local cluster: scripts/slurm_local.sh start)")
        if warnings is None:
            raise UserError(message)
        warnings.append(message + "; the partition was not checked")
    partition = launcher.get("partition")
    if partition and shutil.which("sinfo") is not None:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
        known = sorted({p.strip().rstrip("*") for p in out.stdout.split()})
        if out.returncode == 0 and partition not in known:
            raise UserError(f"hydra.launcher.partition={partition}: no such partition; available: {', '.join(known)}")
    if launcher.get("tasks_per_node", 1) < 1 or launcher.get("nodes", 1) < 1:
        raise UserError("hydra.launcher.tasks_per_node and nodes must be >= 1")


def prepare_config(command: str, cfg, overrides: list[str]):
    """Command-specific completion of the composed config (eval: the run's own data config)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "model_dir") or OmegaConf.is_missing(cfg, "inputs"):
        return cfg  # not given: validate() says which key to add, in one line
    if command in ("eval", "predict", "export", "bench-infer", "prune"):
        return use_run_data(cfg, overrides, cfg.model_dir)
    if command == "merge-adapters":  # the data of the input whose head the result keeps (its check)
        head = cfg.head_from if 0 <= cfg.head_from < len(cfg.inputs) else 0
        return use_run_data(cfg, overrides, cfg.inputs[head]) if len(cfg.inputs) else cfg
    if command == "distill":  # the teacher's data, unless data=... says otherwise
        from llmft.techniques.distillation import teacher_dir

        if not cfg.train.distill.teacher:
            raise UserError("llmft distill needs teacher=RUN/model (the model to learn from)")
        return use_run_data(cfg, overrides, str(teacher_dir(cfg.train.distill.teacher)))
    return cfg


def _combinations(overrides: list[str], product: bool = False) -> list[list[str]]:
    """The first value of every sweep, then each other value of each sweep in turn; ``product``:
    every point, in the order Hydra's basic sweeper launches them (the last key varies fastest)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:
        raise UserError(explain(err)) from None
    choices = []
    for override, text in zip(parsed, overrides):
        key = text.split("=", 1)[0]
        if not override.is_sweep_override():
            choices.append([text])
        elif isinstance(override.value(), Glob):  # experiment=glob(*): the group's options
            group = Path(config_dir()) / override.key_or_group
            names = sorted(p.stem for p in group.glob("*.yaml"))
            choices.append([f"{key}={v}" for v in override.value().filter(names)])
        elif override.is_discrete_sweep():
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:  # interval(...) for an optimizing sweeper: any value in it has the same type
            choices.append([])
    if product:
        import itertools

        return [list(point) for point in itertools.product(*[c for c in choices if c])]
    first = [c[0] for c in choices if c]
    combos = [first]
    for i, options in enumerate(choices):
        for option in options[1:]:
            combos.append([option if j == i else c[0] for j, c in enumerate(choices) if c])
    return combos


def explain(err: Exception, overrides: list[str] = ()) -> str:
    """One line from a Hydra/OmegaConf error: the key, what is wrong, the options or the fix."""
    from hydra.errors import MissingConfigException

    from llmft.core.config import LoggerConfig

    group = (getattr(err, "missing_cfg_file", None) or "").rsplit("/", 1)
    if isinstance(err, MissingConfigException) and err.options is None and len(group) > 1:
        err.options = [p.stem for p in (Path(config_dir()) / group[0]).glob("*.yaml")]  # one of a list: 'g=[a,b]'
    if isinstance(err, MissingConfigException) and err.options is not None:
        name = group[-1]
        group_name = group[0] if len(group) > 1 else "config"
        options = sorted(o for o in err.options if not o.endswith("_schema"))
        hint = _PLUGIN_HINTS.get(group_name, "")
        close = difflib.get_close_matches(name, options, n=1)
        guess = f"did you mean {close[0]}? " if close else ""
        return f"{group_name}={name}: no such option; {guess}available: {', '.join(options)}{hint}"
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    full_key = getattr(cause, "full_key", None)
    message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if full_key in LoggerConfig.MOVED:  # logger.mode=online of the one-tracker layout
        return LoggerConfig.misplaced(full_key)
    if "NoneType" in message:  # a key under a tracker that is off (null): OmegaConf names no key
        hints = [LoggerConfig.misplaced(o.split("=", 1)[0]) for o in overrides]
        if any(hints):
            return next(h for h in hints if h)
    if full_key:
        if "not in" in message or "not found" in message:
            parent = full_key.rsplit(".", 1)[0] if "." in full_key else "the config"
            guess = did_you_mean(full_key, getattr(cause, "parent_node", None))
            if guess:
                return f"{full_key}: no such key in {parent}; did you mean {guess}?"
            return f"{full_key}: no such key in {parent} (check the spelling; `llmft train --cfg job` shows every key)"
        return f"{full_key}: {message}"
    return " ".join(str(err).split())[:300]


def did_you_mean(full_key: str, node) -> str | None:
    """The key closest to a misspelt ``full_key``: among its siblings in ``node`` (the config level
    it was looked up in), else among every dotted key of the whole config; None: nothing close."""
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return None
    prefix, _, name = full_key.rpartition(".")
    close = difflib.get_close_matches(name, [str(k) for k in node.keys()], n=1)
    if close:
        return f"{prefix}.{close[0]}" if prefix else close[0]
    root = node._get_root()
    every = []

    def walk(n, path):
        for k in n.keys():
            key = f"{path}.{k}" if path else str(k)
            every.append(key)
            child = n._get_node(k)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                walk(child, key)

    walk(root, "")
    by_leaf = {}  # a key's last part -> the first dotted key that ends in it (a key put under another section)
    for key in every:
        if not key.startswith("hydra"):
            by_leaf.setdefault(key.rpartition(".")[2], key)
    close = difflib.get_close_matches(name, list(by_leaf), n=1)
    return by_leaf[close[0]] if close else None


def use_run_data(cfg, overrides: list[str], model_dir: str):
    """The data config the run of ``model_dir`` trained with, plus any ``data.KEY=VALUE`` from the
    command line. ``data=NAME`` on the command line means another data set: the composed one is kept.
    """
    from omegaconf import OmegaConf, open_dict

    run_config = Path(model_dir) / ".." / "config.yaml"
    meta_file = Path(model_dir) / "llmft.json"
    if not run_config.is_file() and meta_file.is_file():  # an export elsewhere: its source's run
        from llmft.models.loading import read_meta

        source = read_meta(Path(model_dir), f"model_dir={model_dir}").get("source")
        run_config = Path(source) / ".." / "config.yaml" if source else run_config
    if any(o.lstrip("+~").startswith("data=") for o in overrides) or not run_config.is_file():
        return cfg
    try:
        trained = OmegaConf.load(run_config)
    except Exception as err:  # a cut-off or hand-edited config.yaml
        raise UserError(f"model_dir={model_dir}: {run_config.resolve()} does not read ({explain(err)}); "
                        f"give the data config on the command line (data=NAME data.KEY=VALUE)") from None
    if "data" not in trained:
        return cfg
    keys = [o.lstrip("+") for o in overrides if o.lstrip("+").startswith("data.")]
    with open_dict(cfg):
        cfg.data = OmegaConf.merge(cfg.data, trained.data, OmegaConf.from_dotlist(keys).get("data", {}))
    return cfg
