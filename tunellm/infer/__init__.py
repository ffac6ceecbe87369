"""Using a trained model: batched and streamed generation, chat, prediction over a data file."""

from tunellm.infer.generate import Generation, SamplingOptions, generate, stream

__all__ = ["Generation", "SamplingOptions", "generate", "stream"]
