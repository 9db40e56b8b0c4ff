"""``python -m llmft.cli``: how spawned ranks start."""
import sys

from llmft.cli import main

sys.exit(main())
