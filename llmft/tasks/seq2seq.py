"""Sequence-to-sequence generation with an encoder-decoder LM (T5, BART, ...): source -> target.

Loss on the target; evaluation: loss, then generation for the eval sources scored with ROUGE
(rouge_score) and BLEU (sacrebleu).
"""
from __future__ import annotations

from llmft.models.generation import generate, generation_metrics
from llmft.tasks.base import Task, check_texts


class Seq2Seq(Task):
    name = "seq2seq"
    auto_model = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    loss_kind = "token"  # the decoder's logits line up with the labels
    primary_metric = "rougeL"
    input_column_keys = ("source_column",)
    answer_column_key = "target_column"

    def input_columns(self) -> list[str]:
        return [self.data_cfg.source_column]

    def required_columns(self) -> list[str]:
        return [self.data_cfg.source_column, self.data_cfg.target_column]

    def encode(self, dataset, source: str, is_train: bool):
        check_texts(dataset, source, self.required_columns())
        return dataset

    def tokenize(self, dataset, tokenizer):
        d = self.data_cfg

        def encode(batch):
            enc = tokenizer(batch[d.source_column], truncation=True, max_length=d.max_length)
            if d.target_column in batch:
                enc["labels"] = tokenizer(text_target=batch[d.target_column], truncation=True,
                                          max_length=d.max_length)["input_ids"]
            return enc

        return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenize")

    def collator(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def evaluate(self, trainer, tokenized, raw, generate_cfg=None) -> tuple[dict, list[dict]]:
        d = self.data_cfg
        loss = trainer.evaluate(eval_dataset=tokenized)["eval_loss"]
        limit = generate_cfg.max_examples if generate_cfg is not None else None
        sources = raw[d.source_column][:limit]
        references = raw[d.target_column][:limit]
        generations = generate(trainer.model, trainer.processing_class, sources, generate_cfg, add_special_tokens=True)
        metrics = {"loss": round(loss, 5), **generation_metrics(generations, references, bleu=True)}
        return metrics, [{"source": s, "reference": r, "generation": g}
                         for s, r, g in zip(sources, references, generations)]

    def predict(self, trainer, inputs, generate_cfg=None) -> list[dict]:
        sources = inputs[self.data_cfg.source_column]
        generations = generate(trainer.model, trainer.processing_class, sources, generate_cfg, add_special_tokens=True)
        return [{"source": s, "generation": g} for s, g in zip(sources, generations)]
