"""llmft: fine-tune and evaluate language models from one Hydra-composed command line."""

__version__ = "0.1.0"
