"""The private parts of transformers, PEFT and torch llmft relies on (llmft/runtime/hf_private.py):
each still exists with the signature called, and still does what llmft relies on. Each test here
fails when the library changes under one of them. The loss-normalisation override is guarded by
batch equivalence: batch B in one step = B/k with gradient accumulation k, for a row-mean and a
token-mean loss, under plain SGD (a wrongly scaled gradient moves the weights by as much more)."""
from __future__ import annotations

import copy
import inspect
import math

import pytest
from conftest import make_rows

from llmft.runtime import hf_private


def data_cfg(**values):
    from omegaconf import OmegaConf

    from llmft.core.config import DataConfig

    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "x", **values})


def no_dropout(model):
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def classification(tiny_bert, rows: int = 8):
    """(task, model without dropout, tokenizer, tokenized rows): a row-mean loss."""
    from datasets import Dataset

    from llmft.models.loading import load_model, load_tokenizer
    from llmft.tasks import TASKS

    task = TASKS.get("classification")(data_cfg())
    tokenizer = load_tokenizer(str(tiny_bert))
    raw = task.encode(Dataset.from_list(make_rows(rows, seed=2)), "train.jsonl", True)
    import torch

    torch.manual_seed(0)
    return task, no_dropout(load_model(str(tiny_bert), task, tokenizer)), tokenizer, task.tokenize(raw, tokenizer)


def sft(tiny_chat_llama, rows: int = 8):
    """(task, model, tokenizer, tokenized rows): a token-mean loss whose micro-batches hold very
    different numbers of target tokens."""
    from datasets import Dataset

    from llmft.models.loading import load_model, load_tokenizer
    from llmft.tasks import TASKS

    task = TASKS.get("sft")(data_cfg(task="sft"))
    tokenizer = load_tokenizer(str(tiny_chat_llama))
    texts = [r["text"] for r in make_rows(rows, seed=4)]
    words = " ".join(texts).split()
    # rows 0-1 (the first micro-batch of 2) answer in 1 word, rows 2-3 in 24-25
    raw = Dataset.from_list([{"prompt": f"sentiment of : {t}", "response": " ".join(words[: 1 if i % 4 < 2 else 22 + i])}
                             for i, t in enumerate(texts)])
    raw = task.encode(raw, "train.jsonl", True)
    import torch

    torch.manual_seed(0)
    return task, no_dropout(load_model(str(tiny_chat_llama), task, tokenizer)), tokenizer, task.tokenize(raw, tokenizer)


def in_order(dataset):
    """A sampler factory (techniques/sampling.py's shape) that draws the rows in file order."""
    from torch.utils.data import SequentialSampler

    def factory(global_batch, seed):
        return SequentialSampler(dataset)

    return factory


def trainer_for(built, out_dir, batch: int = 2, accum: int = 1, steps: int = 1, sampler="in_order", **args):
    """build_trainer's Trainer for a copy of the model: plain SGD (no momentum, no weight decay)."""
    from transformers import TrainingArguments

    from llmft.runtime.trainer import build_trainer

    task, model, tokenizer, rows = built
    settings = dict(output_dir=str(out_dir), per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                    max_steps=steps, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
                    weight_decay=0.0, max_grad_norm=0.0, save_strategy="no", report_to="none", use_cpu=True,
                    logging_steps=1, disable_tqdm=True, seed=0)
    settings.update(args)
    return build_trainer(TrainingArguments(**settings), copy.deepcopy(model), tokenizer, task, train_dataset=rows,
                         sampler=in_order(rows) if sampler == "in_order" else sampler)


def train(built, out_dir, batch: int, accum: int, steps: int = 1, **args):
    """The trainer after ``steps`` optimizer steps."""
    trainer = trainer_for(built, out_dir, batch, accum, steps, **args)
    trainer.train()
    return trainer


def weights(trainer) -> dict:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def same_weights(a: dict, b: dict) -> None:
    import torch

    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name


# ---------------------------------------------------------------- the Trainer's private methods
@pytest.mark.parametrize("name", ["_save_checkpoint", "_get_grad_norm", "_get_train_sampler", "evaluation_loop"])
def test_the_trainer_still_has_each_overridden_method_with_our_signature(name):
    from transformers import Trainer

    ours = inspect.signature(getattr(hf_private.TrainerPrivates, name))
    theirs = inspect.signature(getattr(Trainer, name))
    assert list(theirs.parameters) == list(ours.parameters), name
    assert [p.default for p in theirs.parameters.values()] == [p.default for p in ours.parameters.values()], name


def test_the_training_loop_hands_each_steps_gradient_norm_to_get_grad_norm(tmp_path, tiny_bert):
    """check_grad_norm sees the clipped norm the Trainer logs, once per optimizer step; an inf
    gradient (loss finite) stops the run before the step."""
    from llmft.core.errors import NonFinite
    from llmft.runtime.hf_trainer import LlmftTrainer

    seen = []
    original = LlmftTrainer.check_grad_norm

    def spy(self, grad_norm):
        seen.append(float(grad_norm))
        return original(self, grad_norm)

    built = classification(tiny_bert)
    LlmftTrainer.check_grad_norm = spy
    try:
        trainer = train(built, tmp_path / "a", batch=2, accum=2, steps=2, max_grad_norm=1.0)
    finally:
        LlmftTrainer.check_grad_norm = original
    logged = [r["grad_norm"] for r in trainer.state.log_history if "grad_norm" in r]
    assert len(seen) == 2 and seen == pytest.approx(logged)

    trainer = trainer_for(built, tmp_path / "b")
    trainer.model.classifier.weight.register_hook(lambda g: g * math.inf)
    with pytest.raises(NonFinite, match="gradient norm became (inf|nan) at step 1"):
        trainer.train()


def test_the_train_dataloader_draws_from_get_train_sampler(tmp_path, tiny_bert):
    """A sampler factory decides the order: the first step trains on the rows it names."""
    from torch.utils.data import Sampler

    from llmft.runtime.hf_trainer import LlmftTrainer

    drawn = []

    class Reversed(Sampler):
        def __init__(self, n):
            self.n = n

        def __iter__(self):
            for i in reversed(range(self.n)):
                drawn.append(i)
                yield i

        def __len__(self):
            return self.n

    from torch.utils.data import RandomSampler

    built = classification(tiny_bert, rows=4)
    asked = []

    def factory(global_batch, seed):
        asked.append((global_batch, seed))
        return Reversed(len(built[3]))

    trainer = trainer_for(built, tmp_path, batch=2, sampler=factory)
    assert isinstance(trainer, LlmftTrainer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert asked == [(2, 0)] and drawn[:2] == [3, 2]
    assert batch["labels"].tolist() == [built[3][3]["labels"], built[3][2]["labels"]]
    plain = trainer_for(built, tmp_path, batch=2, sampler=None)  # no factory: the Trainer's own
    assert isinstance(plain._get_train_sampler(), RandomSampler)


def test_checkpoint_rotation_waits_outside_save_checkpoint(tmp_path, tiny_bert):
    """With save_total_limit=1 the Trainer would delete checkpoint-1 inside _save_checkpoint while
    writing checkpoint-2; the override turns that off (run_dir.prune_checkpoints rotates later)."""
    trainer = train(classification(tiny_bert, rows=4), tmp_path, batch=2, accum=1, steps=2,
                    save_strategy="steps", save_steps=1, save_total_limit=1)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert trainer.args.save_total_limit == 1


def test_session_tokens_reads_what_train_started_from(tmp_path, tiny_bert):
    trainer = train(classification(tiny_bert, rows=4), tmp_path, batch=2, accum=1, steps=2,
                    include_num_input_tokens_seen="all")
    assert trainer._initial_num_input_tokens_seen == 0  # set by train(), not left to getattr's default
    assert trainer.session_tokens() == trainer.state.num_input_tokens_seen > 0
    trainer._initial_num_input_tokens_seen = 5
    assert trainer.session_tokens() == trainer.state.num_input_tokens_seen - 5


def test_eval_loss_is_the_splits_token_mean_not_the_mean_over_rows_of_batch_means(tmp_path, tiny_chat_llama):
    """7 SFT rows of 1 and 24+ target tokens in batches of 3: the split's loss is the mean over all
    its target tokens (one batch of 7), not the Trainer's own (each row counted as its batch's mean)."""
    import torch
    from transformers import TrainingArguments

    from llmft.runtime.trainer import build_trainer

    task, model, tokenizer, rows = sft(tiny_chat_llama, rows=7)
    model.eval()

    def trainer(batch):
        args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=batch, report_to="none",
                                 use_cpu=True, disable_tqdm=True)
        return build_trainer(args, model, tokenizer, task)

    loss = trainer(3).evaluate(eval_dataset=rows)["eval_loss"]
    with torch.no_grad():
        batches = [model(**b).loss.item() for b in trainer(3).get_eval_dataloader(rows)]
        (whole,) = [model(**b).loss.item() for b in trainer(7).get_eval_dataloader(rows)]
    assert len(batches) == 3 and loss == pytest.approx(whole, rel=1e-5)
    # (that this differs from the mean of batch means, by hand on known scores:
    # test_token_loss_is_weighted_by_tokens_not_rows; a tiny random model's batches differ too little)


def test_token_loss_is_weighted_by_tokens_not_rows():
    """Two rows with 1 and 3 target tokens: the split's loss is the mean over its 4 tokens, not
    the mean of the two rows' means (nor of per-batch means)."""
    import torch
    from transformers.modeling_outputs import CausalLMOutput, TokenClassifierOutput

    from llmft.runtime.split_loss import row_losses

    # causal: logits at t score the label at t + 1; uniform over 4 words except where set
    logits = torch.zeros(2, 4, 4)
    logits[0, 0, 1] = math.log(3.0)  # p(label 1) = 3 / 6 = 0.5 for row 0's only target
    labels = torch.tensor([[-100, 1, -100, -100], [-100, 2, 3, 0]])
    sums, counts = row_losses("causal", CausalLMOutput(logits=logits), {"labels": labels})
    assert counts.tolist() == [1, 3]
    assert sums.tolist() == pytest.approx([math.log(2), 3 * math.log(4)], rel=1e-6)
    assert (sums.sum() / counts.sum()).item() == pytest.approx((math.log(2) + 3 * math.log(4)) / 4, rel=1e-6)

    # a packed row: the same two sequences, one after the other; split by position_ids
    packed = torch.cat([logits[0], logits[1]])[None]
    packed_labels = torch.cat([labels[0], labels[1]])[None]
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    sums_p, counts_p = row_losses("causal", CausalLMOutput(logits=packed),
                                  {"labels": packed_labels, "position_ids": positions})
    assert counts_p.tolist() == [1, 3] and sums_p.tolist() == pytest.approx(sums.tolist(), rel=1e-6)

    # per-position tokens (NER, seq2seq): no shift
    out = TokenClassifierOutput(logits=torch.zeros(1, 3, 5))
    sums_t, counts_t = row_losses("token", out, {"labels": torch.tensor([[4, -100, 0]])})
    assert counts_t.tolist() == [2] and sums_t.tolist() == pytest.approx([2 * math.log(5)], rel=1e-6)


# ---------------------------------------------------------------- loss normalisation (model_accepts_loss_kwargs)
def test_the_trainer_still_decides_loss_normalisation_by_model_accepts_loss_kwargs(tiny_bert, tiny_chat_llama):
    from transformers import Trainer

    source = inspect.getsource(Trainer)
    assert "self.model_accepts_loss_kwargs and num_items_in_batch is not None" in source
    task, model, tokenizer, _ = sft(tiny_chat_llama, rows=2)
    from transformers import TrainingArguments

    from llmft.runtime.trainer import build_trainer

    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    assert Trainer(model=model, args=args).model_accepts_loss_kwargs  # what a causal LM is taken for
    assert build_trainer(args, model, tokenizer, task).model_accepts_loss_kwargs  # token mean: kept

    class Objective:  # any objective of llmft's computes its own per-batch mean
        teacher, soft = None, False

    assert not build_trainer(args, model, tokenizer, task, objective=Objective()).model_accepts_loss_kwargs
    task, model, tokenizer, _ = classification(tiny_bert, rows=2)
    assert not build_trainer(args, model, tokenizer, task).model_accepts_loss_kwargs  # row mean


@pytest.mark.parametrize("kind", ["row_mean", "token_mean"])
def test_batch_b_trains_like_b_over_k_with_k_accumulation_steps(tmp_path, tiny_bert, tiny_chat_llama, kind):
    """Batch 4 in one step = batch 2 with 2 accumulation steps = batch 1 with 4: the same gradient
    norm and, under SGD at lr 1, the same weights. A row-mean loss left undivided by k would move
    the weights by 2x / 4x; a token-mean loss divided per micro-batch would weight rows unequally."""
    built = classification(tiny_bert) if kind == "row_mean" else sft(tiny_chat_llama)
    whole = train(built, tmp_path / "b4", batch=4, accum=1)
    reference, norm = weights(whole), whole.state.log_history[0]["grad_norm"]
    for batch, accum in ((2, 2), (1, 4)):
        split = train(built, tmp_path / f"b{batch}", batch=batch, accum=accum)
        assert split.state.log_history[0]["grad_norm"] == pytest.approx(norm, rel=1e-4), (batch, accum)
        same_weights(reference, weights(split))


def test_token_mean_differs_from_the_mean_of_micro_batch_means(tmp_path, tiny_chat_llama):
    """Guard the guard: the SFT rows do hold unequal token counts, so dividing per micro-batch
    (model_accepts_loss_kwargs off) would change the gradient the test above compares."""
    built = sft(tiny_chat_llama)
    whole = train(built, tmp_path / "b4", batch=4, accum=1)
    from llmft.runtime.hf_trainer import LlmftTrainer

    original = LlmftTrainer.own_loss_normalisation
    LlmftTrainer.own_loss_normalisation = lambda self, token_mean: original(self, False)
    try:
        split = train(built, tmp_path / "b2", batch=2, accum=2)
    finally:
        LlmftTrainer.own_loss_normalisation = original
    assert split.state.log_history[0]["grad_norm"] != pytest.approx(whole.state.log_history[0]["grad_norm"], rel=1e-3)


# ---------------------------------------------------------------- torch
def test_cpu_bf16_check_calls_torchs_private_queries():
    import torch

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        assert isinstance(getattr(torch.cpu, name)(), bool), name
    assert hf_private.cpu_has_bf16() in (True, False)


def test_quantized_linear_round_trips_through_its_plain_tensors():
    """int8 export's tensors (models/precision.py) rebuild the same quantized weight, per tensor
    and per channel, and the module still exposes its packed weight and bias."""
    import torch

    model = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(4, 3)), {torch.nn.Linear},
                                                   dtype=torch.qint8)
    weight, bias = hf_private.quantized_weight_bias(model[0])
    assert weight.is_quantized and bias.shape == (3,)
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        rebuilt = hf_private.quantized_tensor(weight.int_repr(), weight.q_per_channel_scales(),
                                              weight.q_per_channel_zero_points(), weight.q_per_channel_axis())
    else:
        rebuilt = hf_private.quantized_tensor(weight.int_repr(), weight.q_scale(), weight.q_zero_point())
    assert torch.equal(rebuilt.dequantize(), weight.dequantize())
    per_tensor = hf_private.quantized_tensor(torch.tensor([[1, -2]], dtype=torch.int8), 0.5, 0)
    assert per_tensor.is_quantized and per_tensor.dequantize().tolist() == [[0.5, -1.0]]
    per_channel = hf_private.quantized_tensor(torch.tensor([[1], [2]], dtype=torch.int8), torch.tensor([1.0, 0.25]),
                                              torch.tensor([0, 0]), 0)
    assert per_channel.dequantize().tolist() == [[1.0], [0.5]]


# ---------------------------------------------------------------- model configs
def test_model_source_and_attention_implementation_read_the_config(tiny_chat_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_llama), attn_implementation="eager")
    assert hf_private.model_source(model) == str(tiny_chat_llama)
    assert hf_private.attention_implementation(model.config) == "eager"
    sdpa = AutoModelForCausalLM.from_pretrained(str(tiny_chat_llama), attn_implementation="sdpa")
    assert hf_private.attention_implementation(sdpa.config) == "sdpa"
    assert hf_private.attention_implementation(None) is None


def test_prompt_tuning_text_init_tokenizes_with_the_models_own_tokenizer(tiny_bert):
    """strategy.init=text: PEFT loads the tokenizer from model_source(model) and starts the prompt
    as the text's token embeddings (repeated to num_virtual_tokens)."""
    import torch
    from omegaconf import OmegaConf

    from llmft.models.loading import load_model
    from llmft.strategies.prompt_tuning import PromptTuning, PromptTuningStrategyConfig

    task, _, tokenizer, _ = classification(tiny_bert, rows=4)  # the labels, read from the rows
    model = load_model(str(tiny_bert), task, tokenizer)
    assert hf_private.model_source(model) == str(tiny_bert)
    table = model.get_input_embeddings().weight.detach().clone()
    strategy_cfg = OmegaConf.merge(OmegaConf.structured(PromptTuningStrategyConfig),
                                   {"init": "text", "init_text": "great awful", "num_virtual_tokens": 7})
    peft_model = PromptTuning(OmegaConf.create({"strategy": strategy_cfg}), task).apply(model)
    ids = tokenizer("great awful")["input_ids"]  # [CLS] great awful [SEP]: PEFT keeps the special tokens
    assert len(ids) == 4 and strategy_cfg.init_text.split() == tokenizer.convert_ids_to_tokens(ids[1:3])
    expected = table[(ids * 2)[:7]]
    assert torch.equal(peft_model.prompt_encoder["default"].embedding.weight.detach(), expected)


# ---------------------------------------------------------------- PEFT: prefix tuning and prompt checkpoints
def tiny_bert_classifier():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


def test_peft_prefix_reaches_the_model_through_the_renamed_forward():
    """PEFT calls the model's own forward with the prefix only when its signature names PEFT's cache
    keyword (past_key_values before PEFT 0.22, cache after); BERT's classifier takes it only through
    **kwargs, so PEFT < 0.22 refuses and PEFT 0.22 bypasses the model's forward. The replaced forward
    names the keyword, hands the prefix on as ``cache``, and the prefix changes the logits."""
    import torch
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    model = tiny_bert_classifier()
    received = []
    plain = model.forward

    def spy(*args, **kwargs):
        cache = kwargs.get("cache")
        received.append(None if cache is None else cache.get_seq_length())  # before the model adds its own
        return plain(*args, **kwargs)

    spy.__signature__ = inspect.signature(plain)
    model.forward = spy
    config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=3)
    if hf_private.peft_cache_name() == "past_key_values":
        with pytest.raises(ValueError, match="past key values"):  # what the rename is for
            get_peft_model(copy.deepcopy(model), config)(input_ids=torch.tensor([[5, 6, 7]]))
    else:
        get_peft_model(copy.deepcopy(model), config)(input_ids=torch.tensor([[5, 6, 7]]))
        assert received == []  # PEFT ran the backbone and the head itself, not the model's forward
    peft_model = get_peft_model(hf_private.cache_as_past_key_values(model), config)
    assert hf_private.peft_cache_name() in inspect.signature(peft_model.base_model.forward).parameters
    assert hf_private.cache_as_past_key_values(peft_model.base_model) is peft_model.base_model  # once only
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        before = peft_model(**inputs).logits
        assert received == [3]  # the prefix's 3 virtual tokens, as the cache
        peft_model.prompt_encoder["default"].embedding.weight.mul_(5)
        after = peft_model(**inputs).logits
    assert not torch.allclose(before, after)


def test_peft_saves_a_prompt_encoders_output_and_loads_it_back_once_made_loadable(tmp_path):
    """A prefix through an MLP: PEFT's adapter file holds the MLP's output as prompt_embeddings, a
    shape its own load into a trainable model (the Trainer's resume, early stopping's best
    checkpoint) refuses; loadable_prompt_embeddings swaps in the embedding table."""
    import torch
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from safetensors.torch import load_file

    config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=3, prefix_projection=True,
                                encoder_hidden_size=8)
    peft_model = get_peft_model(hf_private.cache_as_past_key_values(tiny_bert_classifier()), config)
    peft_model.save_pretrained(str(tmp_path))
    adapter = tmp_path / "adapter_model.safetensors"
    embedding = peft_model.prompt_encoder["default"].embedding.weight
    assert load_file(str(adapter))["prompt_embeddings"].shape != embedding.shape
    fresh = get_peft_model(hf_private.cache_as_past_key_values(tiny_bert_classifier()), config)
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_adapter(str(tmp_path), adapter_name="default", is_trainable=True)
    hf_private.loadable_prompt_embeddings(adapter, embedding)
    assert torch.equal(load_file(str(adapter))["prompt_embeddings"], embedding.detach())
    fresh.load_adapter(str(tmp_path), adapter_name="default", is_trainable=True)
    assert torch.equal(fresh.prompt_encoder["default"].embedding.weight, embedding.detach())
