"""ChatGLM-6B (v1) runs natively (tunellm.models.chatglm6b), checked against modelscope's ChatGLM-6B
implementation on tiny random weights saved in the original layout: logits for prompts with and without a
reply, a left-padded batch, and greedy decoding (our KV cache against the reference's full forward)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunellm.config.schema import ModelConfig
from tunellm.models.load import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MASK, GMASK, SOP, EOP, PAD = 1000, 1001, 1004, 1005, 3
TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELLM_HOME", str(tmp_path_factory.getbasetemp() / "tunellm_home"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A tiny random modelscope ChatGLM-6B (fp32) and its checkpoint folder in the original layout."""
    try:
        from modelscope.models.nlp.chatglm import configuration, text_generation
    except ImportError as error:
        pytest.skip(f"modelscope's ChatGLM-6B reference cannot be imported: {error}")
    config = configuration.ChatGLMConfig(
        vocab_size=1024, hidden_size=64, num_layers=2, num_attention_heads=4, inner_hidden_size=128,
        max_sequence_length=256, bos_token_id=SOP, eos_token_id=EOP, mask_token_id=MASK, gmask_token_id=GMASK,
        pad_token_id=PAD, position_encoding_2d=True,
    )  # fmt: skip
    real_tokenizer = text_generation.ChatGLMTokenizer
    text_generation.ChatGLMTokenizer = type("NoTokenizer", (), {"from_pretrained": staticmethod(lambda *a: None)})
    try:  # the reference loads a tokenizer in its constructor; the model needs none
        torch.manual_seed(0)
        model = text_generation.ChatGLMForConditionalGeneration(config)
    finally:
        text_generation.ChatGLMTokenizer = real_tokenizer
    with torch.no_grad():  # it skips initialisation; it also keeps fp16 buffers until .float()
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * 0.1 + (1.0 if "layernorm.weight" in name else 0.0))
    model = model.float().eval()
    folder = tmp_path_factory.mktemp("chatglm6b")
    raw = {k: v for k, v in config.to_dict().items() if k not in {"id2label", "label2id"}}
    raw.update(model_type="chatglm", architectures=["ChatGLMModel"], torch_dtype="float32",
               auto_map={"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                         "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"})  # fmt: skip
    (folder / "config.json").write_text(json.dumps(raw))
    state = model.state_dict()
    for layer in range(2):  # the released files hold the rotary buffers
        state[f"transformer.layers.{layer}.attention.rotary_emb.inv_freq"] = model.transformer.layers[
            layer
        ].attention.rotary_emb.inv_freq.half()
    torch.save(state, folder / "pytorch_model.bin")
    tiny_tokenizer().save_pretrained(folder)
    return model, folder


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(1024)} | {"<pad>": PAD, "[MASK]": MASK, "[gMASK]": GMASK, "<sop>": SOP}
    backend = Tokenizer(models.WordLevel(vocab | {"<eop>": EOP}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eop>", bos_token="<sop>")


def native(folder):
    from transformers import AutoModelForCausalLM

    from tunellm.models.convert.native import native_location

    return AutoModelForCausalLM.from_pretrained(native_location(str(folder), False)).eval()


def prompt(length: int, reply: int, seed: int) -> list[int]:
    ids = torch.randint(5, 1000, (length + reply,), generator=torch.Generator().manual_seed(seed)).tolist()
    return ids[:length] + [GMASK, SOP] + ids[length:]


def test_logits_match_the_reference(reference) -> None:
    model, folder = reference
    ours = native(folder)
    assert type(ours).__name__ == "ChatGLM6BForCausalLM"
    for length, reply in ((1, 0), (6, 0), (9, 5), (30, 12)):
        ids = torch.tensor([prompt(length, reply, seed=length)])
        with torch.no_grad():
            expected, got = model(input_ids=ids).logits, ours(input_ids=ids).logits
        assert expected.std() > 0.1
        torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


def test_left_padded_batch_matches_each_prompt_alone(reference) -> None:
    model, folder = reference
    ours = native(folder)
    rows = [prompt(12, 4, seed=1), prompt(3, 0, seed=2), prompt(7, 2, seed=3)]
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).logits
        for i, row in enumerate(rows):
            expected = model(input_ids=torch.tensor([row])).logits[0]
            torch.testing.assert_close(got[i, width - len(row) :], expected, atol=TOLERANCE, rtol=0)


def test_greedy_decoding_with_the_cache_matches_the_reference(reference) -> None:
    model, folder = reference
    ours = native(folder)
    ids = torch.tensor([prompt(10, 0, seed=4)])
    expected = ids
    with torch.no_grad():
        for _ in range(8):
            step = model(input_ids=expected).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, step], dim=-1)
    ours.generation_config.eos_token_id = None
    got = ours.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert got.tolist() == expected.tolist()


def test_loads_through_tunellm_and_trains_with_lora(reference) -> None:
    from tunellm.methods import enable_activation_checkpointing, lora
    from tunellm.methods.lora import LoraMethod

    _, folder = reference
    model, tokenizer, family = load_model(ModelConfig(name_or_path=str(folder)), device="cpu")
    assert type(model).__name__ == "ChatGLM6BForCausalLM" and family.name == "chatglm"
    assert family.template_for(tokenizer, model.config) == "chatglm"
    wrapped = lora.apply(model, LoraMethod(r=4, lora_alpha=8, lora_dropout=0.0), family)
    adapted = {n.rsplit(".", 1)[-1] for n, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    batch = torch.tensor([prompt(6, 4, seed=9), prompt(6, 4, seed=10)])
    labels = batch.clone()
    labels[:, :8] = -100  # train the reply only
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    wrapped.train()
    for _ in range(3):
        loss = wrapped(input_ids=batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    enable_activation_checkpointing(wrapped)  # recomputed layers give the same loss and gradients
    loss = wrapped(input_ids=batch, labels=labels).loss
    loss.backward()
    assert loss.item() == pytest.approx(wrapped.eval()(input_ids=batch, labels=labels).loss.item(), abs=1e-5)
    grads = [p.grad for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_ptuning_v2_prefix_is_seen_and_generation_with_the_cache_agrees(reference) -> None:
    from tunellm.methods import METHODS
    from tunellm.methods.ptuning_v2 import PTuningV2Method

    _, folder = reference
    model, _, family = load_model(ModelConfig(name_or_path=str(folder)), device="cpu")
    wrapped = METHODS.get("ptuning_v2").apply(model, PTuningV2Method(pre_seq_len=4), family)
    with torch.no_grad():
        for param in wrapped.prompt_encoder.parameters():
            param.normal_(0, 3.0, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([prompt(6, 0, seed=11)])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        with_prefix = wrapped(input_ids=ids, attention_mask=mask).logits
        with wrapped.disable_adapter():
            without = wrapped(input_ids=ids, attention_mask=mask).logits
    assert (with_prefix - without).abs().max() > 1e-2  # the trained prefix reaches every layer's attention
    out = wrapped.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                           eos_token_id=None, output_scores=True, return_dict_in_generate=True)  # fmt: skip
    sequence = out.sequences
    with torch.no_grad():  # each step's scores equal a full forward (no cache) over the prefix and the sequence
        for step, scores in enumerate(out.scores):
            upto = sequence[:, : ids.shape[1] + step]
            full = wrapped(input_ids=upto, attention_mask=torch.ones_like(upto)).logits[:, -1]
            torch.testing.assert_close(scores, full, atol=TOLERANCE, rtol=0)


def test_converted_weights_go_back_to_the_original_layout(reference, tmp_path) -> None:
    from tunellm.models.convert.native import native_location, write_original
    from tunellm.models.convert.weights import read_state_dict

    _, folder = reference
    back = tmp_path / "original"
    write_original(Path(native_location(str(folder), False)), back)
    source, written = read_state_dict(folder), read_state_dict(back)
    assert source.keys() == written.keys() and all(torch.equal(source[k], written[k]) for k in source)
    assert json.loads((back / "config.json").read_text()) == json.loads((folder / "config.json").read_text())
