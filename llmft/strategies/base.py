"""The Strategy protocol: how a fine-tuning method changes loading, parameters and saving."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar

from llmft.core.config import StrategyConfig
from llmft.core.errors import UserError
from llmft.core.registry import Registry

STRATEGIES = Registry("llmft.strategies", key="strategy")


class Strategy:
    """Base class. Subclasses set ``config`` (their schema) and override what they change; a
    subclass in ``llmft/strategies/NAME.py`` is strategy NAME (``abstract=True``: a shared base).

    The recipe calls, in order: ``validate_config`` (before anything loads),
    ``model_load_kwargs`` (extra ``from_pretrained`` arguments, e.g. quantization),
    ``apply`` (returns the model to train), ``param_groups`` (optimizer groups with their own
    learning-rate scale; None: the Trainer's default), ``callbacks``, ``save``; ``llmft eval``
    calls ``load_trained``.
    """

    name: ClassVar[str]  # its module's name, set when the class is defined
    config: ClassVar[type[StrategyConfig]] = StrategyConfig
    saves_adapter: ClassVar[bool] = False  # True: model/ holds only the trained parameters
    trains: ClassVar[bool] = True  # False: evaluate the model as it is (prompting)
    zero_stages: ClassVar[int] = 3  # the highest DeepSpeed ZeRO stage it runs under
    zero_note: ClassVar[str] = ""  # why not higher
    unfreezes_later: ClassVar[bool] = False  # True: frozen parameters start training mid-run (L2-SP anchors them)
    mergeable: ClassVar[bool] = False  # its adapter merges into the base weights (llmft export format=merged)
    quantized_base: ClassVar[bool] = False  # the base weights load quantized (drift against fp32 is meaningless)

    def __init_subclass__(cls, abstract: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        name = STRATEGIES.module_name(cls)
        if name and not abstract:
            cls.name = name
            STRATEGIES.register(cls)

    def __init__(self, run_cfg, task):
        self.run_cfg = run_cfg  # the whole run's config (hardware, train) for strategies that need it
        self.cfg = run_cfg.strategy
        self.task = task

    @classmethod
    def validate_config(cls, run_cfg) -> None:
        """Raise UserError for impossible combinations (wrong task, bad knob values)."""

    @classmethod
    def pattern_ensemble(cls, run_cfg) -> bool:
        """True: this config trains one model per prompt pattern and ensembles them (PET's
        ensemble; techniques/pet_ensemble.py runs the stages, which label the unlabelled data)."""
        return False

    @classmethod
    def trains_matrices(cls, run_cfg) -> bool:
        """True: whole weight matrices train (what GaLore / APOLLO project); False: adapters,
        prompts, biases, or nothing."""
        return cls.trains and not cls.saves_adapter

    @classmethod
    def check_hardware(cls, run_cfg) -> None:
        """The DeepSpeed ZeRO stage the hardware asks for is one this strategy runs under."""
        stage = run_cfg.hardware.zero_stage
        if stage > cls.zero_stages:
            raise UserError(f"hardware.zero_stage: strategy={cls.name} supports ZeRO up to stage {cls.zero_stages} "
                            f"({cls.zero_note}); use hardware=cpu or a lower zero_stage")

    def model_load_kwargs(self) -> dict:
        return {}

    def model_class(self, path: str) -> str | None:
        """The transformers Auto class to load; None: the task's (its head)."""
        return None

    def prepare_data(self, splits: dict, tokenizer) -> dict:
        """Change the raw splits before tokenization (prompting renders its templates here)."""
        return splits

    @classmethod
    def prepare_saved_data(cls, splits: dict, tokenizer, meta: dict) -> dict:
        """The same change for ``llmft eval`` / ``predict`` of a saved model."""
        return splits

    def before_eval(self, trainer) -> None:
        """Called once training is done (or skipped), before the eval split is scored."""

    def evaluate(self, trainer, eval_set, raw_eval, generate_cfg):
        return self.task.evaluate(trainer, eval_set, raw_eval, generate_cfg)

    def apply(self, model):
        return model

    def param_groups(self, model) -> list[dict] | None:
        """[{"name": str, "params": [parameter names], "lr_scale": float}] or None."""
        return None

    def callbacks(self) -> list:
        return []

    def report(self) -> dict:
        """What the strategy did during training, for results.json (e.g. when layers unfroze)."""
        return {}

    def metadata(self) -> dict:
        """Extra entries for model/llmft.json that ``load_trained`` needs."""
        return {}

    def save(self, trainer, model_dir: Path) -> None:
        trainer.save_model(str(model_dir))  # full model, or PEFT adapter for a PeftModel

    @classmethod
    def load_trained(cls, model_dir: Path, task, meta: dict, tokenizer, trust_remote_code: bool = False,
                     **load_kwargs):
        """The saved model, ready to predict: a full HF folder or a PEFT adapter on its base (at the
        revision it trained on). ``trust_remote_code``: the command line's, never llmft.json's;
        ``load_kwargs`` go to every ``from_pretrained`` (``device_map`` for eval/predict)."""
        from llmft.models.loading import load_model, revision_kwargs

        if (model_dir / "adapter_config.json").is_file():
            from peft import PeftModel

            from llmft.runtime.hf_private import peft_without_bitsandbytes

            peft_without_bitsandbytes()
            base = load_model(meta["base_model"], task, tokenizer, trust_remote_code,
                              **revision_kwargs(meta.get("revision")), **cls.base_load_kwargs(meta), **load_kwargs)
            return PeftModel.from_pretrained(cls.adapt_base(base), str(model_dir))
        return load_model(str(model_dir), task, tokenizer, trust_remote_code, **load_kwargs)

    @classmethod
    def base_load_kwargs(cls, meta: dict) -> dict:
        return {}

    @classmethod
    def adapt_base(cls, base):
        """The loaded base model as the adapter expects it (prefix tuning renames an argument)."""
        return base


def set_trainable(model, keep: Callable[[str, object], bool]) -> None:
    """requires_grad = keep(name, part) for every parameter (part: llmft.models.anatomy.Part)."""
    from llmft.models.anatomy import parts

    params = dict(model.named_parameters())
    for name, part in parts(model).items():
        params[name].requires_grad_(keep(name, part))


class PeftStrategy(Strategy):
    """A PEFT method: ``peft_config()`` builds its config, PEFT wraps the model and saves the adapter.

    PEFT's task type keeps the task head trainable and saved (``modules_to_save``).
    """

    saves_adapter = True

    def peft_config(self):
        raise NotImplementedError

    def save(self, trainer, model_dir: Path) -> None:
        """The Trainer saves the adapter with its real tensors under ZeRO-3 too. Prompt learning
        is saved by hand there: PEFT runs the prompt encoder on rank 0 alone at save time, which
        under ZeRO-3 waits forever for the other ranks; here every rank runs it, gathered."""
        from llmft.runtime.distributed import zero3_enabled

        encoder = getattr(trainer.model, "prompt_encoder", None)
        if encoder is None or not zero3_enabled(trainer):
            trainer.save_model(str(model_dir))
            return
        import deepspeed

        state = trainer.accelerator.get_state_dict(trainer.deepspeed)  # every rank: the full weights on rank 0
        with deepspeed.zero.GatheredParameters(list(encoder.parameters()), modifier_rank=None):
            # every rank computes the prompt to save (a forward of the encoder); rank 0 writes it
            trainer.model.save_pretrained(str(model_dir), state_dict=state,
                                          is_main_process=trainer.is_world_process_zero())

    def apply(self, model):
        return wrap_peft(model, self.peft_config())


def wrap_peft(model, peft_config):
    """PEFT's model around ``model``; PEFT's target-module errors as one line."""
    from peft import get_peft_model

    from llmft.runtime.hf_private import peft_without_bitsandbytes

    peft_without_bitsandbytes()
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:
        raise peft_target_error(err, model) from None


def peft_target_error(err: ValueError, model) -> Exception:
    """PEFT's errors about target modules as one line naming the key and the model's module names."""
    text = str(err)
    if "not found in the base model" in text or "were not found" in text or "No modules were targeted" in text:
        import torch.nn as nn

        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        return UserError(f"strategy.target_modules: no module of this model matches; its linear layers "
                         f"are named: {', '.join(names)}")
    if "target_modules" in text or "feedforward_modules" in text:
        return UserError(f"strategy.target_modules: PEFT has no default for model type "
                         f"'{model.config.model_type}'; set e.g. strategy.target_modules=[q_proj,v_proj]")
    return err
