"""Fast tokenizers for the ChatGLM2/3 and Baichuan SentencePiece models, with no remote code.

The `tokenizers` pipeline reproduces SentencePiece's: the model's own normalisation (its precompiled charsmap,
the extra-whitespace rule, the dummy prefix), then BPE with the pieces' scores as merge priorities and byte
fallback (or Unigram). ChatGLM2's tokenizer numbers its special tokens after the SentencePiece vocabulary
([MASK] [gMASK] [sMASK] sop eop, then ChatGLM3's roles); they are added in that order, so their ids match.
Special tokens written in text are recognised, as ChatGLM3's tokenizer does. Checked against modelscope's
ChatGLM2Tokenizer and against `sentencepiece` itself in tests/unit/test_convert_tokenizers.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tunellm.errors import ModelError

CHATGLM_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
CHATGLM3_ROLES = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
FAST_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def read_proto(model_file: Path) -> Any:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as error:
        raise ModelError(
            f"cannot read SentencePiece models: {error}",
            file=str(model_file),
            hint="pip install sentencepiece protobuf",
        ) from None

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception:  # protobuf's DecodeError, or a tiktoken file (GLM-4) that is not protobuf at all
        proto = None
    if proto is None or not proto.pieces:
        raise ModelError(
            "tokenizer.model is not a SentencePiece model",
            file=str(model_file),
            hint="GLM-4's tiktoken tokenizer is not converted: use THUDM/glm-4-9b-chat-hf, which ships a fast one",
        )
    return proto


def normalizer(spec: Any) -> Any:
    from tokenizers import Regex, normalizers

    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # SentencePiece trims and collapses ASCII spaces only
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    steps.append(normalizers.Replace(" ", "\u2581"))
    return normalizers.Sequence(steps)


def backend_from_proto(proto: Any, offset: int = 0) -> Any:
    """A `tokenizers.Tokenizer` that encodes as the SentencePiece model does (ids shifted by `offset`)."""
    from tokenizers import AddedToken, Tokenizer, decoders
    from tokenizers.models import BPE, Unigram
    from transformers.tokenization_utils_base import generate_merges

    spec = proto.trainer_spec
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if spec.model_type == 2:
        vocab = {piece: i + offset for i, (piece, _) in enumerate(pieces)}
        vocab.update({f"<image_{i}>": i for i in range(offset)})  # ChatGLM-6B's image ids come first
        skip = {p.piece for p in proto.pieces if p.type != NORMAL}
        merges = generate_merges(vocab, dict(pieces), skip_tokens=skip | {f"<image_{i}>" for i in range(offset)})
        model = BPE(
            vocab, merges, unk_token=spec.unk_piece, fuse_unk=True, byte_fallback=spec.byte_fallback,
            ignore_merges=bool(offset),  # ChatGLM-6B's layout marks are pre-tokens found whole in the vocabulary
        )  # fmt: skip
    elif spec.model_type == 1 and not offset:
        model = Unigram(pieces, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback)
    else:
        raise ModelError("only BPE and Unigram SentencePiece models are converted", field="tokenizer.model")
    backend = Tokenizer(model)
    backend.normalizer = normalizer(proto.normalizer_spec)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(steps)
    if not offset:  # ChatGLM-6B's caller adds its own
        marked = (CONTROL, USER_DEFINED)
        specials = [p.piece for p in proto.pieces if p.type in marked and p.piece not in ("<s>", "</s>")]
        backend.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in specials])
    return backend


ICE_SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>")
IMAGE_TOKENS = 20000
MAX_BLANK = 80


def fast_from_ice_text(source: Path) -> Any:
    """ChatGLM-6B's tokenizer: newlines as <n>, tabs as <|tab|>, runs of spaces as <|blank_N|>, then
    SentencePiece, with every id shifted past 20,000 image tokens."""
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    proto = read_proto(source / "ice_text.model")
    backend = backend_from_proto(proto, offset=IMAGE_TOKENS)
    blanks = [(" " * n, f"<|blank_{n}|>") for n in range(MAX_BLANK, 1, -1)]
    marks = [normalizers.Replace("\n", "<n>"), normalizers.Replace("\t", "<|tab|>")]
    marks += [normalizers.Replace(spaces, name) for spaces, name in blanks]
    backend.normalizer = normalizers.Sequence([*marks, backend.normalizer])
    # SentencePiece keeps its user-defined marks whole and adds no dummy prefix after them
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"<n>|<\|tab\|>|<\|blank_\d+\|>"), behavior="isolated")
    pieces = {p.piece for p in proto.pieces}
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ICE_SPECIALS if t in pieces])
    restore = [decoders.Replace("<n>", "\n"), decoders.Replace("<|tab|>", "\t")]
    restore += [decoders.Replace(name, spaces) for spaces, name in blanks]
    backend.decoder = decoders.Sequence([*restore, backend.decoder])
    pad = "<pad>" if "<pad>" in pieces else proto.trainer_spec.unk_piece
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<sop>", eos_token="<eop>", mask_token="[MASK]",
        unk_token=proto.trainer_spec.unk_piece, pad_token=pad, padding_side="left",
    )  # fmt: skip


def chatglm_roles(source: Path) -> bool:
    """ChatGLM3's tokenizer (its code, or its tokenizer_config) names the role tokens; ChatGLM2's does not."""
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in source.glob("*.py")]
    config = source / "tokenizer_config.json"
    if config.is_file():
        texts.append(config.read_text(encoding="utf-8", errors="replace"))
    return any("<|observation|>" in text for text in texts)


def token_content(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def fast_from_sentencepiece(source: Path, raw: dict[str, Any]) -> Any:
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    proto = read_proto(source / "tokenizer.model")
    backend = backend_from_proto(proto)
    settings: dict[str, Any] = {}
    config_file = source / "tokenizer_config.json"
    if config_file.is_file():
        settings = json.loads(config_file.read_text(encoding="utf-8"))
    spec = proto.trainer_spec
    names = {"unk_token": spec.unk_piece, "bos_token": spec.bos_piece, "eos_token": spec.eos_piece}
    if raw.get("model_type") == "chatglm":
        extra = CHATGLM_SPECIALS + (CHATGLM3_ROLES if chatglm_roles(source) else ())
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra])
        names["pad_token"] = spec.unk_piece  # ChatGLM2 pads with <unk>
        del names["bos_token"]  # it writes no BOS, and "<s>" in text stays text there
        side = "left"
    else:
        for key in names:
            names[key] = token_content(settings.get(key)) or names[key]
        pad = token_content(settings.get("pad_token"))
        if pad:
            names["pad_token"] = pad
        side = settings.get("padding_side", "right")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side=side,
        model_max_length=settings.get("model_max_length", raw.get("seq_length", 4096)),
        **names,
    )


def convert_tokenizer(source: Path, target: Path, raw: dict[str, Any]) -> None:
    """Write a fast tokenizer for the checkpoint in `source` into `target`."""
    if (source / "tokenizer.json").is_file():  # already fast: copy it, minus any pointer to remote code
        for name in FAST_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
        config_file = target / "tokenizer_config.json"
        if config_file.is_file():
            settings = json.loads(config_file.read_text(encoding="utf-8"))
            settings.pop("auto_map", None)
            settings["tokenizer_class"] = "PreTrainedTokenizerFast"
            config_file.write_text(json.dumps(settings, indent=2, ensure_ascii=False), encoding="utf-8")
        return
    if (source / "ice_text.model").is_file():
        fast_from_ice_text(source).save_pretrained(target)
        return
    if not (source / "tokenizer.model").is_file():
        raise ModelError(
            "the checkpoint has no tokenizer to convert",
            file=str(source),
            expected="tokenizer.model or ice_text.model (SentencePiece), or tokenizer.json",
        )
    fast_from_sentencepiece(source, raw).save_pretrained(target)
