"""Native ChatGLM2 (transformers' glm after tunellm's conversion) against modelscope's reference implementation.

Builds a random ChatGLM2-shaped model (6B's vocabulary and head layout, fewer and narrower layers), saves it in
the original layout, then times: the conversion (first load, cached after), and the fp32 forward of both models
on one prompt, and reports the largest logit difference.

    nice -n 10 env PYTHONPATH=. .venv/bin/python bench/chatglm_native_bench.py --layers 4 --hidden 1024 --length 512
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def timed(function, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--length", type=int, default=512)
    args = parser.parse_args()
    from modelscope.models.nlp.chatglm2 import configuration, text_generation

    heads = args.hidden // 128
    config = configuration.ChatGLM2Config(
        num_layers=args.layers, padded_vocab_size=65024, hidden_size=args.hidden, ffn_hidden_size=args.hidden * 27 // 8,
        kv_channels=128, num_attention_heads=heads, multi_query_attention=True, multi_query_group_num=2,
        add_qkv_bias=True, torch_dtype=torch.float32,
    )  # fmt: skip
    config.max_length, config.original_rope, config.use_cache = 2048, True, False
    torch.manual_seed(0)
    reference = text_generation.ChatGLM2ForConditionalGeneration(config)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.copy_(torch.randn_like(param) * 0.02 + (1.0 if "layernorm" in name else 0.0))
    reference.eval()
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "chatglm2"
        folder.mkdir()
        raw = {k: v for k, v in config.to_dict().items() if k not in {"id2label", "label2id", "max_length"}}
        raw.update(model_type="chatglm", torch_dtype="float32", auto_map={"AutoModel": "modeling_chatglm.X"})
        (folder / "config.json").write_text(json.dumps(raw))
        torch.save(reference.state_dict(), folder / "pytorch_model.bin")
        (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordLevel",
                                               "vocab": {"<unk>": 0}, "unk_token": "<unk>"}}))  # fmt: skip
        os.environ["TUNELLM_HOME"] = str(Path(root) / "home")
        from transformers import AutoModelForCausalLM

        from tunellm.models.convert.native import native_location

        start = time.perf_counter()
        converted = native_location(str(folder), trust_remote_code=False)
        convert_s = time.perf_counter() - start
        native = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
        ids = torch.randint(3, 60000, (1, args.length), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            difference = (native(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max().item()
            native_s = timed(lambda: native(input_ids=ids))
            reference_s = timed(lambda: reference(input_ids=ids))
    params = sum(p.numel() for p in native.parameters())
    print(f"{params / 1e6:.0f}M parameters, {args.layers} layers, hidden {args.hidden}, {args.length} tokens, fp32")
    print(f"conversion (first load): {convert_s:.2f} s; max |logit difference|: {difference:.2e}")
    print(f"forward: native glm {native_s:.3f} s, modelscope reference {reference_s:.3f} s (best of 3)")


if __name__ == "__main__":
    main()
