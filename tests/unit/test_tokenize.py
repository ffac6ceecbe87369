"""Tokenization: masking, truncation knobs, the fully-masked report, the fast batch path, the dataset shape."""

import numpy as np
import pytest

from tunellm.config.schema import DataConfig
from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import get_template
from tunellm.data.tokenize import (
    TokenizedDataset,
    TokenizeOptions,
    encode_conversation,
    encode_texts,
    tokenize_conversations,
)


def chat(*texts: str, line: int = 1, system: str | None = "Be brief.") -> Conversation:
    roles = ["user", "assistant"]
    turns = [Turn(roles[i % 2], t) for i, t in enumerate(texts)]
    return Conversation(turns, Source("train.jsonl", line=line), system=system)


@pytest.fixture(scope="module")
def chatml(default_tokenizer):
    return get_template("chatml", default_tokenizer)


def encode(tokenizer, template, conversation, **options):
    return encode_conversation(conversation, tokenizer, template, TokenizeOptions(**options))


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def trained(sample) -> list[int]:
    return sample["labels"][sample["labels"] != -100].tolist()


def test_prompt_masked_reply_trained_with_eos(default_tokenizer, chatml):
    sample = encode(default_tokenizer, chatml, chat("What is 2+2?", "It is 4."))
    assert sample["input_ids"].dtype == np.int32 and sample["labels"].dtype == np.int32
    assert trained(sample) == ids_of(default_tokenizer, "It is 4.<|im_end|>")
    assert sample["labels"][-1] == -100  # the newline after <|im_end|> is prompt
    assert default_tokenizer.decode(sample["input_ids"]).endswith("assistant\nIt is 4.<|im_end|>\n")


def test_every_reply_trained_unless_mask_history(default_tokenizer, chatml):
    conversation = chat("Hi", "Hello!", "Colour?", "Blue.")
    both = ids_of(default_tokenizer, "Hello!<|im_end|>") + ids_of(default_tokenizer, "Blue.<|im_end|>")
    assert trained(encode(default_tokenizer, chatml, conversation)) == both
    last = encode(default_tokenizer, chatml, conversation, mask_history=True)
    assert trained(last) == ids_of(default_tokenizer, "Blue.<|im_end|>")


def test_train_on_prompt_trains_everything(default_tokenizer, chatml):
    sample = encode(default_tokenizer, chatml, chat("Hi", "Hello!"), train_on_prompt=True)
    assert sample["labels"].tolist() == sample["input_ids"].tolist()


def test_max_source_length_keeps_the_end_of_each_prompt(default_tokenizer, chatml):
    conversation = chat("one two three four five six seven eight nine ten", "Done.")
    full = encode(default_tokenizer, chatml, conversation)
    cut = encode(default_tokenizer, chatml, conversation, max_source_length=5)
    reply = len(trained(full))
    assert len(cut["input_ids"]) == 5 + reply + 1  # prompt, reply, trailing newline (a prompt segment too)
    prompt_end = len(full["input_ids"]) - reply - 1
    assert cut["input_ids"][:5].tolist() == full["input_ids"][prompt_end - 5 : prompt_end].tolist()
    assert trained(cut) == trained(full)


def test_max_target_length_keeps_the_eos(default_tokenizer, chatml):
    sample = encode(default_tokenizer, chatml, chat("Count.", "one two three four five six seven"), max_target_length=3)
    assert trained(sample) == ids_of(default_tokenizer, "one two")[:2] + [default_tokenizer.eos_token_id]


def test_cutoff_len_truncates_the_whole_sample_from_the_right(default_tokenizer, chatml):
    conversation = chat("Hi", "Hello there, friend!", "Colour?", "Blue.")
    full = encode(default_tokenizer, chatml, conversation)
    first_reply_end = int(np.flatnonzero(full["labels"] != -100)[0]) + 3
    dataset = tokenize_conversations(
        [conversation], default_tokenizer, chatml, TokenizeOptions(cutoff_len=first_reply_end)
    )
    assert dataset[0]["input_ids"].tolist() == full["input_ids"][:first_reply_end].tolist()
    assert dataset.report.truncated == 1 and dataset.report.truncated_sources == ["train.jsonl:1"]


def test_generation_prompt_keeps_its_end_under_cutoff(default_tokenizer, chatml):
    prompt = chat("a b c d e f g h i j k l")
    full = encode_conversation(prompt, default_tokenizer, chatml, for_generation=True)
    cut = encode_conversation(prompt, default_tokenizer, chatml, TokenizeOptions(cutoff_len=6), for_generation=True)
    assert cut["input_ids"].tolist() == full["input_ids"][-6:].tolist()
    assert default_tokenizer.decode(cut["input_ids"]).endswith("<|im_start|>assistant\n")


def test_fully_masked_samples_are_counted_listed_and_excluded(default_tokenizer, chatml):
    long_prompt = chat("word " * 50, "Short.", line=2)
    rows = [chat("Hi", "Hello!", line=1), long_prompt, chat("No reply yet", line=3), chat("Ok?", "Ok.", line=4)]
    dataset = tokenize_conversations(rows, default_tokenizer, chatml, TokenizeOptions(cutoff_len=30))
    report = dataset.report
    assert (report.rows, report.kept, report.fully_masked) == (4, 2, 2)
    assert report.fully_masked_sources == ["train.jsonl:2", "train.jsonl:3"]
    assert "train.jsonl:2" in report.summary() and "fully masked" in report.summary()
    assert len(dataset) == 2 and all((dataset[i]["labels"] != -100).any() for i in range(2))
    assert report.trained_tokens == int((dataset.labels != -100).sum())


def test_fast_batch_path_gives_the_tokenizers_own_ids(default_tokenizer):
    texts = [f"Row {i}: naïve café, 中文 {i * 7}\n\n  spaced <|im_start|>user\n<|im_end|>" for i in range(40)]
    texts += ["", " leading", "trailing ", "\n\n\n", "emoji 🤗 and tabs\t\t"]
    flat, lengths = encode_texts(default_tokenizer, texts)
    expected = [ids_of(default_tokenizer, t) for t in texts]
    assert lengths.tolist() == [len(e) for e in expected]
    assert flat.tolist() == [i for e in expected for i in e]
    one_thread = encode_texts(default_tokenizer, texts, num_workers=1)
    assert one_thread[0].tolist() == flat.tolist()


def test_batch_equals_one_by_one(default_tokenizer, chatml):
    rows = [chat(f"Question {i}?", f"Answer {i}.", line=i) for i in range(50)]
    dataset = tokenize_conversations(rows, default_tokenizer, chatml)
    for i in (0, 17, 49):
        single = encode_conversation(rows[i], default_tokenizer, chatml)
        assert dataset[i]["input_ids"].tolist() == single["input_ids"].tolist()
        assert dataset[i]["labels"].tolist() == single["labels"].tolist()


def test_dataset_interface(default_tokenizer, chatml):
    dataset = tokenize_conversations([chat("A?", "a."), chat("B?", "b.")], default_tokenizer, chatml)
    assert isinstance(dataset, TokenizedDataset) and len(dataset) == 2
    assert set(dataset[0]) == {"input_ids", "labels"}
    assert dataset[-1]["input_ids"].tolist() == dataset[1]["input_ids"].tolist()
    assert dataset.lengths.tolist() == [len(dataset[0]["input_ids"]), len(dataset[1]["input_ids"])]
    with pytest.raises(IndexError):
        dataset[2]


def test_no_conversations_is_an_empty_dataset(default_tokenizer, chatml):
    dataset = tokenize_conversations([], default_tokenizer, chatml)
    assert len(dataset) == 0 and dataset.report.rows == 0 and dataset.input_ids.dtype == np.int32


def test_options_from_config():
    options = TokenizeOptions.from_config(DataConfig(cutoff_len=64, mask_history=True, num_workers=1))
    assert (options.cutoff_len, options.mask_history, options.num_workers) == (64, True, 1)
    assert "num_workers" not in options.result_options()


def test_plain_text_with_the_none_template_is_trained_whole(default_tokenizer):
    document = Conversation([Turn("assistant", "Once upon a time.")], Source("book.txt", line=1))
    sample = encode_conversation(document, default_tokenizer, get_template("none", default_tokenizer))
    assert sample["labels"].tolist() == ids_of(default_tokenizer, "Once upon a time.<|im_end|>")


def reference(tokenizer, template, conversation, options):
    """The rules of tokenize.py written plainly, one conversation at a time."""
    segments = template.render(conversation, False)
    last = max((i for i, s in enumerate(segments) if s.trainable), default=-1)
    ids, labels = [], []
    for i, (text, trainable) in enumerate(segments):
        piece = ids_of(tokenizer, text)
        if not trainable and options.max_source_length:
            piece = piece[-options.max_source_length :]
        if trainable and options.max_target_length and len(piece) > options.max_target_length:
            piece = piece[: options.max_target_length - 1] + piece[-1:]
        train = (trainable and (not options.mask_history or i == last)) or (not trainable and options.train_on_prompt)
        ids += piece
        labels += piece if train else [-100] * len(piece)
    return ids[: options.cutoff_len], labels[: options.cutoff_len]


@pytest.mark.parametrize(
    "options",
    [
        TokenizeOptions(cutoff_len=48),
        TokenizeOptions(cutoff_len=40, max_source_length=12, max_target_length=6),
        TokenizeOptions(cutoff_len=64, max_target_length=4, mask_history=True),
        TokenizeOptions(cutoff_len=30, max_source_length=20, train_on_prompt=True),
    ],
)
def test_batch_matches_the_plain_rules(default_tokenizer, chatml, options):
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    rows = []
    for i in range(60):
        turns = [" ".join(words[: 1 + (i * 7 + k) % 10] * (1 + i % 3)) for k in range(2 + 2 * (i % 2))]
        rows.append(chat(*turns, line=i, system=None if i % 4 else "Be brief."))
    dataset = tokenize_conversations(rows, default_tokenizer, chatml, options)
    expected = [reference(default_tokenizer, chatml, row, options) for row in rows]
    kept = [e for e in expected if any(label != -100 for label in e[1])]
    assert len(dataset) == len(kept) == dataset.report.kept
    for i, (ids, labels) in enumerate(kept):
        assert dataset[i]["input_ids"].tolist() == ids
        assert dataset[i]["labels"].tolist() == labels
