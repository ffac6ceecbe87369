"""Fixtures shared across test folders. Keep it small: add a fixture here only when two files need it."""

import os

import pytest


def pytest_configure(config):
    """Under pytest-xdist (scripts/test.sh runs two workers on two cores) each worker computes on one thread."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def default_tokenizer():
    """The embedded default tokenizer (SmolLM2-135M-Instruct, ChatML template); loading takes a few seconds."""
    from tunellm.config.schema import ModelConfig
    from tunellm.models.tokenizer import load_tokenizer

    return load_tokenizer(ModelConfig())


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from more threads, and on 2 shared cores 2 threads run about 3x slower.

    Use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llama():
    """A factory: a seeded tiny random llama (hidden 64, 2 layers) with `vocab` ids, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunellm.models.families.base import llama_style_tiny

    def build(vocab: int, seed: int = 0, **overrides):
        fields = llama_style_tiny("llama", vocab_size=vocab, max_position_embeddings=512, **overrides)
        fields.pop("model_type")
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(**fields)).eval()

    return build


@pytest.fixture(scope="session")
def tiny_llama_dir(default_tokenizer, tiny_llama, tmp_path_factory):
    """A saved tiny llama with the default tokenizer's 49,152 ids and the tokenizer beside it; the same weights
    in every session."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = default_tokenizer
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    tiny_llama(len(tokenizer), pad_token_id=tokenizer.pad_token_id, **ids).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def write_checkpoint(default_tokenizer):
    """A factory: save `model` into `folder` as a step-N checkpoint of `method` (its options) trained on `base`,
    as `train.checkpoint.save_checkpoint` writes one, minus the resume-only state/."""
    import yaml

    from tunellm.config.schema import ModelConfig, RunConfig
    from tunellm.methods import METHODS

    def write(model, folder, method, base):
        folder.mkdir(parents=True, exist_ok=True)
        METHODS.get(method.name).save(model, folder)
        default_tokenizer.save_pretrained(str(folder))
        config = RunConfig(model=ModelConfig(name_or_path=str(base)), method=method)
        (folder / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        return folder

    return write


@pytest.fixture(scope="session")
def tiny_lora_checkpoint(tiny_llama_dir, write_checkpoint, tmp_path_factory):
    """`run/step-2`: a LoRA (r=4) checkpoint on the tiny llama whose adapter changes the output a lot. Read-only."""
    import torch
    from transformers import LlamaForCausalLM

    from tunellm.methods import lora
    from tunellm.methods.lora import LoraMethod
    from tunellm.models.families import family_for

    model = lora.apply(LlamaForCausalLM.from_pretrained(tiny_llama_dir), LoraMethod(r=4), family_for("llama"))
    torch.manual_seed(2)
    with torch.no_grad():  # B starts at zero: make the adapter change the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return write_checkpoint(model, tmp_path_factory.mktemp("lora") / "run" / "step-2", LoraMethod(r=4), tiny_llama_dir)


def mixed_corpus() -> list[str]:
    """Chinese, English and code lines, no downloads: the strings of the test data fixtures, tunellm's own
    source, and the shared data sets' first lines where this machine has them."""
    import json
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    lines: list[str] = []

    def strings(value) -> None:
        if isinstance(value, str):
            lines.extend(part for part in value.split("\n") if part.strip())
        elif isinstance(value, dict | list):
            for item in value.values() if isinstance(value, dict) else value:
                strings(item)

    for path in sorted((root / "tests" / "fixtures" / "data").glob("*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                strings(json.loads(line))
            except ValueError:
                lines.append(line)
    for path in sorted((root / "tunellm" / "data").rglob("*.py")):
        lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    shared_data = Path(os.environ.get("TUNELLM_SHARED_DATA", root.parent / "shared" / "data"))
    shared = shared_data / "alpaca_zh/zh-data-part-00.json"
    if shared.is_file():
        strings(json.loads(shared.read_text(encoding="utf-8"))[:300])
    return lines


@pytest.fixture(scope="session")
def mixed_lines() -> list[str]:
    return mixed_corpus()


@pytest.fixture(scope="session")
def sentencepiece_folders(tmp_path_factory, mixed_lines):
    """{"chatglm" | "nfkc" | "baichuan": folder}, each with a tiny BPE tokenizer.model trained on mixed_corpus()
    with the options of that family's released tokenizer (ChatGLM2: identity, dummy prefix; Baichuan: identity,
    no dummy prefix, reserved tokens as user-defined symbols), or SentencePiece's defaults; byte fallback."""
    import io

    sentencepiece = pytest.importorskip("sentencepiece")
    corpus = mixed_lines
    common = {"model_type": "bpe", "vocab_size": 2000, "hard_vocab_limit": False, "byte_fallback": True}
    common.update(
        character_coverage=0.98,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    kinds = {
        "chatglm": {"normalization_rule_name": "identity", "remove_extra_whitespaces": False},
        "nfkc": {},  # SentencePiece's defaults: NFKC, extra whitespace removed, dummy prefix
        "baichuan": {
            "add_dummy_prefix": False,
            "remove_extra_whitespaces": False,
            "normalization_rule_name": "identity",
            "user_defined_symbols": ["<reserved_106>", "<reserved_107>"],
        },
    }
    folders = {}
    for kind, options in kinds.items():
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_writer=model, **common, **options
        )
        folder = tmp_path_factory.mktemp(f"spm_{kind}")
        (folder / "tokenizer.model").write_bytes(model.getvalue())
        folders[kind] = folder
    return folders


@pytest.fixture(scope="session")
def ice_text_folder(tmp_path_factory, mixed_lines):
    """A folder with a tiny ChatGLM-6B-style ice_text.model: BPE, byte fallback, <n>/<|tab|>/<|blank_N|> marks
    and the special tokens as user-defined symbols, <pad> at id 3."""
    import io

    sentencepiece = pytest.importorskip("sentencepiece")
    from tunellm.models.convert.tokenizers import ICE_SPECIALS, MAX_BLANK

    layout = ["<n>", "<|tab|>", *(f"<|blank_{n}|>" for n in range(2, MAX_BLANK + 1))]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(mixed_lines), model_writer=model, model_type="bpe", vocab_size=2000,
        hard_vocab_limit=False, byte_fallback=True, character_coverage=0.98, unk_id=0, bos_id=1, eos_id=2,
        pad_id=3, pad_piece="<pad>", user_defined_symbols=[*layout, *ICE_SPECIALS], num_threads=1, minloglevel=2,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("ice_text")
    (folder / "ice_text.model").write_bytes(model.getvalue())
    return folder
