"""tunellm: from raw instruction data to a fine-tuned chat LLM."""

__version__ = "0.1.0"
