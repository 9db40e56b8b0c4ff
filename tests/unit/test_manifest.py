"""RUN/manifest.json (runtime/manifest.py) and what ``llmft reproduce`` decides before a run
(cli/reproduce.py), in process: the keys, every seed found by its name, the input digests
core/digest.py computes (not hashed again), no secret inside, a dirty checkout's diff (capped);
the recorded config composes back to itself, and a changed input or a bad target is refused."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import make_rows, write_csv

SECRET = "s3cr3t-value-of-the-manifest-test"
KEYS = {"manifest_version", "written", "llmft", "python", "packages", "hardware", "seeds", "config_fingerprint",
        "inputs", "command", "cwd", "environment"}


@pytest.fixture
def model(tmp_path) -> Path:
    """A model folder as validation reads it (config.json; nothing here loads weights)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 128}))
    return folder


def ident_of(cfg) -> dict:
    """What runtime/run_dir.fingerprint returns, as far as the manifest reads it (that module loads transformers)."""
    from llmft.core.digest import input_digests

    return {"fingerprint": "0123456789abcdef", "config": {"seed": cfg.seed, **input_digests(cfg)}}


@pytest.fixture
def data(tmp_path) -> dict:
    return {"train": write_csv(tmp_path / "train.csv", make_rows(24, seed=1)),
            "eval": write_csv(tmp_path / "eval.csv", make_rows(12, seed=2))}


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llmft.cli.table import config_dir
    from llmft.cli.validate import register_configs

    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def tiny_cfg(model: Path, data: dict, *extra: str):
    return compose("model=hf", f"model.name_or_path={model}", "data=csv", f"data.train_file={data['train']}",
                   f"data.eval_file={data['eval']}", *extra)


def test_manifest_keys_seeds_inputs_and_no_secret(model, data, monkeypatch):
    from llmft.core import digest
    from llmft.runtime import manifest as m

    monkeypatch.setenv("LLMFT_TEST_SECRET", SECRET)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("MY_PRIVATE_TOKEN", SECRET)  # not on the allow-list: never recorded
    monkeypatch.setattr("sys.argv", ["llmft-train", f"data.hub_config={SECRET}", "seed=5"])  # as a shell expands it
    cfg = tiny_cfg(model, data, "seed=5", "data.split_seed=11", "data.hub_config=${oc.env:LLMFT_TEST_SECRET}")
    ident = ident_of(cfg)

    def hashed_again(path):
        raise AssertionError(f"{path} hashed again: the fingerprint's digests are to be reused")

    monkeypatch.setattr(digest, "file_digest", hashed_again)
    monkeypatch.setattr(digest, "path_digest", hashed_again)
    out = m.build(cfg, ident)
    assert set(out) == KEYS
    assert out["seeds"]["seed"] == 5 and out["seeds"]["data.split_seed"] == 11
    assert all("seed" in key.rsplit(".", 1)[-1] for key in out["seeds"])
    # found by name, wherever a technique puts one
    assert m.seeds({"train": {"noise": {"mask_seed": 3, "rate": 0.1}}, "seeds_file": None, "lr": 1}) == \
        {"train.noise.mask_seed": 3, "seeds_file": None}
    assert out["config_fingerprint"] == ident["fingerprint"]
    expected = {f"data.{k}_file#sha256": hashlib.sha256(Path(data[k]).read_bytes()).hexdigest()[:16]
                for k in ("train", "eval")}
    assert {k: v for k, v in out["inputs"].items() if k.startswith("data.")} == expected  # hand-computed
    assert "model.name_or_path#sha256" in out["inputs"]
    monkeypatch.undo()
    monkeypatch.setenv("LLMFT_TEST_SECRET", SECRET)
    assert out["inputs"] == digest.input_digests(cfg)
    assert out["environment"]["OMP_NUM_THREADS"] == "3" and "MY_PRIVATE_TOKEN" not in out["environment"]
    assert set(out["environment"]) <= set(m.ENVIRONMENT)
    assert out["command"] == ["llmft-train", "data.hub_config=<redacted>", "seed=5"]
    assert SECRET not in json.dumps(out)
    assert {"torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "deepspeed", "numpy",
            "scikit-learn", "hydra-core", "omegaconf"} <= set(out["packages"])
    assert out["packages"]["numpy"] == __import__("numpy").__version__
    assert out["hardware"]["world_size"] == 1 and out["hardware"]["precision"] == cfg.hardware.precision
    assert out["python"]["version"].count(".") == 2


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_diff_when_dirty_and_its_cap(tmp_path, monkeypatch):
    from llmft.runtime import manifest as m

    root = tmp_path / "checkout"
    (root / "llmft").mkdir(parents=True)
    (root / "llmft" / "a.py").write_text("x = 1\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "one")
    clean = m.git_state(root.resolve())["git"]
    assert clean == {"commit": git(root, "rev-parse", "HEAD").strip(), "dirty": False, "status": []}
    (root / "llmft" / "a.py").write_text("x = 2\n" + "y = 0\n" * 100)
    (root / "new.txt").write_text("untracked\n")
    dirty = m.git_state(root.resolve())["git"]
    assert dirty["dirty"] and "?? new.txt" in dirty["status"] and " M llmft/a.py" in dirty["status"]
    assert "-x = 1\n+x = 2\n" in dirty["diff"] and dirty["diff_truncated"] is False
    assert dirty["diff_bytes"] == len(dirty["diff"].encode())
    (root / "llmft" / "a.py").write_text("x = 2\ntoken = 'sk-not-a-real-one-1234'\n")  # an edit holding the config's secret
    scrubbed = m.git_state(root.resolve(), {"sk-not-a-real-one-1234"})["git"]
    assert "sk-not-a-real-one-1234" not in scrubbed["diff"] and "token = '" in scrubbed["diff"]
    (root / "llmft" / "a.py").write_text("x = 2\n" + "y = 0\n" * 100)
    monkeypatch.setattr(m, "DIFF_CAP", 100)
    cut = m.git_state(root.resolve())["git"]
    assert cut["diff_truncated"] and cut["diff_cap_bytes"] == 100 and len(cut["diff"].encode()) <= 100
    assert cut["diff_bytes"] == dirty["diff_bytes"]
    assert m.git_state((root / "llmft").resolve())["git"]["commit"] is None  # inside a checkout, not its root
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "not a git checkout" in m.git_state(plain)["git"]["why"]


def test_differences():
    from llmft.runtime.manifest import differences

    recorded = {"llmft": {"version": "0.1.0", "git": {"commit": "a" * 40, "dirty": False}},
                "python": {"version": "3.11.4"}, "packages": {"torch": "2.5.1", "peft": "0.13.0", "trl": "0.9"},
                "hardware": {"cpu": "X", "cores": 2, "gpus": [], "world_size": 1}, "environment": {"OMP_NUM_THREADS": "1"}}
    here = json.loads(json.dumps(recorded))
    assert differences(recorded, here) == {}
    here["packages"].update(torch="2.6.0")
    del here["packages"]["trl"]
    here["llmft"]["git"] = {"commit": "b" * 40, "dirty": True}
    here["hardware"]["cores"] = 16
    del here["environment"]["OMP_NUM_THREADS"]
    assert differences(recorded, here) == {
        "packages": ["torch 2.5.1 -> 2.6.0", "trl 0.9 -> unset"],
        "hardware": ["cores 2 -> 16"],
        "environment": ["OMP_NUM_THREADS 1 -> unset"],
        "llmft": [f"git {'a' * 12} -> {'b' * 12} (dirty)"]}


# ------------------------------------------------------------ llmft reproduce, up to the run
@pytest.fixture(scope="module")
def template(tmp_path_factory) -> dict:
    """A run folder as a training run leaves it before training (config.yaml, manifest.json,
    .hydra/), composed once for this file; tests use copies of it (``recorded_run``)."""
    import yaml

    from llmft.core.redact import to_yaml
    from llmft.runtime.manifest import build

    root = tmp_path_factory.mktemp("recorded")
    folder = root / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 128}))
    files = {"train": write_csv(root / "train.csv", make_rows(24, seed=1)),
             "eval": write_csv(root / "eval.csv", make_rows(12, seed=2))}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LLMFT_TEST_SECRET", SECRET)
        cfg = tiny_cfg(folder, files, "strategy=lora", "seed=9", "train.lr=0.002", "train.max_steps=3",
                       "data.split_seed=5", "data.hub_config=${oc.env:LLMFT_TEST_SECRET}")
        run = root / "run"
        (run / ".hydra").mkdir(parents=True)
        (run / "config.yaml").write_text(to_yaml(cfg))
        (run / "manifest.json").write_text(json.dumps(build(cfg, ident_of(cfg))))
    choices = {"model": "hf", "data": "csv", "strategy": "lora", "hardware": "cpu", "logger": "none"}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    return {"run": run, "data": files}


@pytest.fixture
def recorded_run(template, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the default new folder (outputs/train/<time>) goes here
    monkeypatch.setenv("LLMFT_TEST_SECRET", SECRET)
    return Path(shutil.copytree(template["run"], tmp_path / "run"))


@pytest.fixture
def changed_train(template):
    """The recorded run's train file with a row added since (restored afterwards)."""
    path = Path(template["data"]["train"])
    original = path.read_bytes()
    path.write_bytes(original + b"great day,positive\n")
    yield path
    path.write_bytes(original)


def plan(*args: str) -> dict:
    from llmft.cli.reproduce import prepare

    out = prepare(list(map(str, args)), compare_machine=False)
    shutil.rmtree(out["presets"])
    return out


def flat(cfg) -> dict:
    from llmft.cli.reproduce import flatten
    from llmft.core.redact import redacted

    return flatten(redacted(cfg))


def test_the_recorded_config_composes_back_to_itself(recorded_run):
    import yaml

    from llmft.cli.reproduce import flatten

    recorded = flatten(yaml.safe_load((recorded_run / "config.yaml").read_text()))
    out = plan(recorded_run)
    assert flat(out["config"]) == recorded
    assert recorded["strategy.name"] == "lora" and recorded["train.lr"] == 0.002
    assert out["config"].data.hub_config == SECRET  # read from the environment again, recorded as its interpolation
    assert any(o.startswith("hydra.run.dir=outputs/train/") for o in out["overrides"])
    assert not any(line.startswith("WARNING") for line in out["report"]), out["report"]
    assert "inputs: the same 3 digest(s) as recorded" in out["report"]
    changed = plan(recorded_run, "train.lr=0.004", "seed=10")
    assert {k for k, v in flat(changed["config"]).items() if recorded.get(k) != v} == {"train.lr", "seed"}
    assert "overridden: seed 9 -> 10, train.lr 0.002 -> 0.004" in changed["report"]
    assert changed["typed"] == ["train.lr=0.004", "seed=10"]
    regrouped = flat(plan(recorded_run, "+strategy=full")["config"])  # the group's section is the option's
    assert regrouped["strategy.name"] == "full" and "strategy.r" not in regrouped
    assert regrouped["train.lr"] == 0.002 and regrouped["seed"] == 9  # the rest stays the run's


def test_the_recorded_values_win_over_todays_packaged_defaults(recorded_run):
    """A value no override set (as if configs/train.yaml or a group file changed since the run)."""
    text = (recorded_run / "config.yaml").read_text()
    assert "  batch_size: 32\n" in text
    (recorded_run / "config.yaml").write_text(text.replace("  batch_size: 32\n", "  batch_size: 7\n", 1))
    out = plan(recorded_run)
    assert out["config"].train.batch_size == 7 and not any("WARNING" in line for line in out["report"])


def test_a_key_the_schema_no_longer_composes_to_is_said(recorded_run):
    text = (recorded_run / "config.yaml").read_text()
    (recorded_run / "config.yaml").write_text(text.replace("max_steps: 3", "max_steps: 3\n  my_lost_key: 1", 1))
    from llmft.core.errors import UserError

    with pytest.raises(UserError) as err:  # this llmft's schema has no such key: which, and what ran it
        plan(recorded_run)
    assert "train.my_lost_key: not a key of this llmft's config" in str(err.value)
    assert "llmft 0.1.0" in str(err.value)


@pytest.mark.parametrize("how,message", [
    ("no_manifest", "no readable manifest.json"),
    ("no_config", "no config.yaml in it"),
    ("into_run", "is the run being reproduced"),
    ("inside_run", "is inside the run being reproduced"),
    ("changed_data", "not what"),
    ("multirun", "-m: not an option of llmft reproduce"),
    ("no_run", "name the run folder first"),
])
def test_refusals(recorded_run, template, request, how, message):
    from llmft.core.errors import UserError

    args = [recorded_run]
    if how == "no_manifest":
        (recorded_run / "manifest.json").unlink()
    elif how == "no_config":
        (recorded_run / "config.yaml").unlink()
    elif how == "into_run":
        args.append(f"hydra.run.dir={recorded_run}")
    elif how == "inside_run":
        args.append(f"hydra.run.dir={recorded_run / 'again'}")
    elif how == "changed_data":
        changed = request.getfixturevalue("changed_train")
        message = f"data.train_file ({changed}): sha256 "
    elif how == "multirun":
        args.append("-m")
    elif how == "no_run":
        args = ["seed=1"]
    with pytest.raises(UserError) as err:
        plan(*args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_changed_input_is_run_when_allowed_and_said_loudly(recorded_run, changed_train):
    out = plan(recorded_run, "--allow-changed-data")
    assert any(line.startswith("CHANGED INPUT (the results will differ): data.train_file (") for line in out["report"])
    moved = plan(recorded_run, "--allow-changed-data", f"data.eval_file={changed_train}")
    assert "inputs overridden: data.eval_file (overridden)" in moved["report"]
