"""Checkpoints written for remote code (ChatGLM2/3, Baichuan) turned into transformers' native architectures.

`native.py` decides whether a folder needs it and keeps the converted copy in the cache; one module per
source family holds the config and weight mappings (both directions); `tokenizers.py` builds fast tokenizers
from their SentencePiece models; `weights.py` reads and writes checkpoint files.
"""
