"""Template checks: a rendered training sample, the end-of-turn the model learns and whether generation stops on
it, pad vs EOS, the BOS the tokenizer expects, and the round trip of the exported chat template."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tunellm.data.record import Conversation, Source, Turn
from tunellm.doctor.base import CHECKS, Context, Result
from tunellm.errors import TunellmError

REPLY = "Four."
PROBE = Conversation([Turn("user", "What is 2+2?"), Turn("assistant", REPLY)], Source("<doctor probe>"))
TALK = Conversation(
    [Turn("user", "Hi"), Turn("assistant", "Hello!"), Turn("user", "What is 2+2?")],
    Source("<doctor probe>"),
    "Be brief.",
)
SAMPLE_CHARS = 1200


def ids_of(value: Any) -> set[int]:
    if value is None:
        return set()
    return {value} if isinstance(value, int) else {int(v) for v in value}


def token_text(tokenizer: Any, token_id: int) -> str:
    return repr(tokenizer.decode([token_id], skip_special_tokens=False))


def stop_ids(context: Context) -> tuple[set[int], list[str]]:
    """The ids generation stops on (generation config, tokenizer EOS, the family's extra stops, one-token stop
    strings), and the stop strings checked as text: `infer.stops.find_stops` on a stand-in model."""
    from tunellm.infer.stops import find_stops

    generation = SimpleNamespace(eos_token_id=context.generation_config.get("eos_token_id"), pad_token_id=0)
    if generation.eos_token_id is None:
        generation.eos_token_id = context.model_config.get("eos_token_id")
    stand_in = SimpleNamespace(config=SimpleNamespace(pad_token_id=0), generation_config=generation)
    context.family.fix_tokens(context.tokenizer, stand_in)  # families add their stop tokens to the generation config
    stops = find_stops(stand_in, context.tokenizer, context.template)
    return set(stops.eos_ids), list(stops.watched)


def learned_end(context: Context) -> tuple[str, list[int]]:
    """The text after the reply in the probe's trained segment, and the trained segment's ids."""
    segments = [s for s in context.template.render(PROBE, False) if s.trainable]
    text = segments[-1].text
    at = text.find(REPLY)
    tail = text[at + len(REPLY) :] if at >= 0 else text
    return tail, context.tokenizer(text, add_special_tokens=False)["input_ids"]


def vocab_size(context: Context) -> int | None:
    raw = context.model_config
    value = raw.get("vocab_size") or raw.get("padded_vocab_size")
    return int(value) if value else None


def check_eos(context: Context) -> Result:
    tokenizer = context.tokenizer
    tail, ids = learned_end(context)
    stops, watched = stop_ids(context)
    end_id = ids[-1]
    vocab = vocab_size(context)
    details = [
        f"trained reply ends with {tail!r}; last token {token_text(tokenizer, end_id)} (id {end_id})",
        f"tokenizer EOS {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}); "
        f"generation config EOS {sorted(ids_of(context.generation_config.get('eos_token_id'))) or 'none'}",
        f"generation stops on ids {sorted(stops)}" + (f" and on the text {watched}" if watched else ""),
    ]
    data = {"end_text": tail, "end_id": end_id, "stop_ids": sorted(stops), "stop_texts": watched}
    if vocab is not None and end_id >= vocab:
        message = (
            f"the end-of-turn token id {end_id} is outside the model's {vocab:,} outputs: it can never be generated"
        )
        return Result("template.eos", "fail", message, details, data, sure=True)
    caught = any(i in stops for i in ids[-max(len(tokenizer(tail, add_special_tokens=False)["input_ids"]), 1) :])
    caught = caught or any(text and text in tail for text in [*watched, *context.template.stop_strings])
    if not caught:
        message = f"the model learns to end replies with {tail!r}, which generation does not stop on: replies never end"
        return Result("template.eos", "fail", message, details, data, sure=True)
    disagreements = end_disagreements(context, tail, end_id)
    if disagreements:
        return Result("template.eos", "warn", "; ".join(disagreements), details, data)
    return Result(
        "template.eos", "pass", f"replies end with {tail.strip()!r}, and generation stops on it", details, data
    )


def end_disagreements(context: Context, tail: str, end_id: int) -> list[str]:
    """Where the tokenizer's EOS, the generation config and the tokenizer's chat template say otherwise."""
    found = []
    tokenizer = context.tokenizer
    generation = ids_of(context.generation_config.get("eos_token_id"))
    if generation and end_id not in generation and tokenizer.eos_token_id != end_id:
        found.append(
            f"generation_config.json does not list the end-of-turn id {end_id}: engines reading only it will not "
            "stop (tunellm merge writes it there)"
        )
    if getattr(tokenizer, "chat_template", None) and context.template.name != "hf_chat":
        from tunellm.data.templates import get_template

        try:
            native = get_template("hf_chat", tokenizer).end
        except TunellmError:
            native = None
        if native and native.strip() != tail.strip():
            found.append(
                f"template {context.template.name} ends turns with {tail.strip()!r}, the tokenizer's chat template "
                f"with {native.strip()!r}: the tuned model will not stop when prompted through its own chat template"
            )
    return found


def check_pad(context: Context) -> Result:
    tokenizer = context.tokenizer
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    vocab = vocab_size(context)
    if pad is None:
        return Result("template.pad", "warn", "the tokenizer has no pad token; batches pad with id 0")
    if vocab is not None and pad >= vocab:
        return Result("template.pad", "fail", f"pad id {pad} is outside the model's {vocab:,} embeddings")
    if pad == eos:
        message = f"pad = EOS (id {pad}): fine, padding is masked by position, so the trained EOS still counts"
        return Result("template.pad", "pass", message)
    return Result("template.pad", "pass", f"pad {tokenizer.pad_token!r} (id {pad}), EOS id {eos}")


def check_bos(context: Context) -> Result:
    """The tokens the tokenizer itself puts before text (BOS; ChatGLM's [gMASK]sop): do training samples start so?"""
    from tunellm.data.tokenize import TokenizeOptions, tokenize_conversations

    tokenizer = context.tokenizer
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    prefix = full[: len(full) - len(plain)] if full[len(full) - len(plain) :] == plain else []
    family = context.family.name
    if not prefix:
        return Result(
            "template.bos", "pass", f"the tokenizer adds nothing before text ({family} family): none expected"
        )
    sample = tokenize_conversations([PROBE], tokenizer, context.template, TokenizeOptions())
    starts = [int(i) for i in sample[0]["input_ids"][: len(prefix)]] if len(sample) else []
    shown = tokenizer.decode(prefix, skip_special_tokens=False)
    if starts == list(prefix):
        return Result("template.bos", "pass", f"samples start with {shown!r}, as the tokenizer expects")
    message = f"the tokenizer puts {shown!r} before text ({family} family) but training samples start without it"
    return Result("template.bos", "warn", message, data={"expected": list(prefix), "found": starts})


def messages_of(conversation: Conversation) -> list[dict[str, str]]:
    system = [] if conversation.system is None else [{"role": "system", "content": conversation.system}]
    return system + [{"role": turn.role, "content": turn.content} for turn in conversation.turns]


def check_export(context: Context) -> Result:
    """`tunellm merge` writes `template.chat_template()` into the tokenizer: it must render as the template does."""
    template, tokenizer = context.template, context.tokenizer
    try:
        jinja = template.chat_template()
    except TunellmError as error:
        return Result("template.export", "warn", f"no chat template to export: {str(error).splitlines()[0]}")
    ours = "".join(segment.text for segment in template.render(TALK, True))
    try:
        theirs = tokenizer.apply_chat_template(
            messages_of(TALK), chat_template=jinja, tokenize=False, add_generation_prompt=True
        )
    except Exception as error:  # a Jinja error in the exported text
        return Result("template.export", "fail", f"the exported chat template does not render: {error}")
    if ours != theirs:
        details = [f"template: {ours!r}", f"exported: {theirs!r}"]
        return Result("template.export", "fail", "the exported chat template renders differently", details)
    return Result("template.export", "pass", "the exported chat template renders a conversation as training does")


def check_sample(context: Context) -> Result:
    from tunellm.data.inspect import token_runs
    from tunellm.data.tokenize import TokenizeOptions

    data = context.config.data
    rows = context.read(data.train).conversations if data.train else []
    conversation = rows[0] if rows else PROBE
    runs = token_runs(conversation, context.tokenizer, context.template, TokenizeOptions.from_config(data))
    text = "".join(f"[[{run}]]" if trained else run for run, trained in runs)
    if len(text) > SAMPLE_CHARS:
        text = text[:SAMPLE_CHARS] + " ..."
    message = f"template {context.template.name}; {conversation.source}, trained text in [[...]]"
    return Result("template.sample", "pass", message, details=[text], data={"runs": runs})


@CHECKS.register("template")
def check_template(context: Context) -> list[Result]:
    return [check_sample(context), check_eos(context), check_pad(context), check_bos(context), check_export(context)]
