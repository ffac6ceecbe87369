"""The parity check `tunellm merge` runs after every merge: the merged model, loaded back from disk, against
the adapter model it came from, on a few prompts rendered with the checkpoint's template.

Per prompt (rendered and encoded by the code chat uses), with the adapter model's greedy reply:
- logits: both models score the prompt followed by the adapter's reply (one forward pass each); the largest
  absolute difference over all those positions must be within the tolerance;
- greedy: the merged model's own greedy reply must be token for token the adapter's. A reply that parts
  at a near tie (the adapter preferred its token by no more than the tolerance) is reported but passes:
  the logit check already bounds such flips, and half precision makes them common;
- chat template: the written tokenizer renders the prompt as the template does, and encodes it alike;
- weights (LoRA): each merged layer equals base + scale·B·A computed in float32, within the dtype's rounding
  (weight_parity.py): exact where the logit tolerance of half precision is not.
Prompts come from `--data` records (a record's reply left out) or are built in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tunellm.config.schema import RunConfig
from tunellm.data.prepare import read_data
from tunellm.data.record import Conversation, Source, Turn
from tunellm.data.templates import Template
from tunellm.data.tokenize import TokenizeOptions
from tunellm.errors import TunellmError
from tunellm.infer.generate import SamplingOptions, encode_prompts, generation_config, model_device
from tunellm.infer.predict import split_reference
from tunellm.infer.stops import find_stops, finish_text, pad_id_of
from tunellm.infer.weight_parity import LayerParity

PARITY_FILE = "parity.json"
BUILTIN_PROMPTS: tuple[tuple[str, ...], ...] = (  # user and assistant turns, alternating; the last is the user's
    ("What is the capital of France?",),
    ("Write a short poem about the sea.",),
    ("Hi!", "Hello! How can I help you today?", "Give me three tips for sleeping well."),
    ("Explain what a binary search does, in two sentences.",),
    ("Translate 'good morning' into Spanish and German.",),
    ("List the planets of the solar system, nearest first.",),
)
# Default --tolerance: the largest logit difference a merge may cause, by the dtype the models run in. Measured
# on SmolLM2-135M with LoRA (logits up to ~35): fp32 1.1e-4 to 1.6e-4, fp16 0.30, bf16 1.3 to 1.8 (a bf16 forward
# pass alone is 1.1 away from fp32). fp32 catches a wrong merge of any size; half precision only a gross one.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 4.0, torch.float16: 1.0}


class ParityError(TunellmError):
    """The merged model does not behave as the adapter model did; `result` holds the report."""

    def __init__(self, message: str, *, result: Any = None, **where: Any) -> None:
        super().__init__(message, **where)
        self.result = result


@dataclass
class Outputs:
    """What one model gives on the parity prompts."""

    prompt_ids: list[list[int]]
    reply_ids: list[list[int]]  # greedy, up to and including the first EOS id, at most max_new_tokens
    replies: list[str]  # the replies as chat shows them (cut at a stop string)
    logits: list[torch.Tensor]  # over the prompt + the adapter's reply: (tokens, vocab), float32 on the CPU


@dataclass
class PromptParity:
    prompt: str  # the last message, for the report
    tokens: int  # positions compared: the prompt and the adapter's reply
    max_logit_diff: float
    adapter_reply: str
    merged_reply: str
    parted_at: int | None  # the first reply token where the greedy replies differ
    gap: float | None  # there: the adapter's logit for its token minus its logit for the merged model's token
    prompt_render: str  # "same", "text differs", "tokens differ", or "not covered (tools)"

    def greedy(self, tolerance: float) -> str:
        if self.parted_at is None:
            return "same"
        kind = "near tie" if self.gap is not None and self.gap <= tolerance else "differs"
        gap = f" (gap {self.gap:.3g})" if self.gap is not None else ""
        return f"{kind} at token {self.parted_at + 1}{gap}"


@dataclass
class ParityReport:
    rows: list[PromptParity]
    tolerance: float
    dtype: str
    max_new_tokens: int
    layers: LayerParity | None = None  # the exact per-layer check of a LoRA merge (weight_parity.py)

    @property
    def max_logit_diff(self) -> float:
        return max(row.max_logit_diff for row in self.rows)

    def problems(self) -> list[str]:
        """What disagrees, one phrase each; empty when parity holds."""
        found = []
        if not self.max_logit_diff <= self.tolerance:  # written so that NaN fails
            found.append(f"max logit difference {self.max_logit_diff:.3g} is above the tolerance {self.tolerance:g}")
        differ = sum(row.greedy(self.tolerance).startswith("differs") for row in self.rows)
        if differ:
            found.append(f"{differ} of {len(self.rows)} greedy replies differ")
        renders = sum(row.prompt_render not in ("same", "not covered (tools)") for row in self.rows)
        if renders:
            found.append(f"the written tokenizer renders {renders} of {len(self.rows)} prompts differently")
        if self.layers is not None:
            found += self.layers.problems()
        return found

    @property
    def passed(self) -> bool:
        return not self.problems()

    def to_json(self) -> dict[str, Any]:
        rows = [
            {**asdict(row), "max_logit_diff": json_number(row.max_logit_diff), "greedy": row.greedy(self.tolerance)}
            for row in self.rows
        ]
        return {
            "passed": self.passed,
            "problems": self.problems(),
            "max_logit_diff": json_number(self.max_logit_diff),
            "tolerance": self.tolerance,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
            "layers": self.layers.to_json() if self.layers is not None else None,
            "prompts": rows,
        }


def json_number(value: float) -> float | None:
    """JSON has no inf or NaN: they are written as null."""
    return value if math.isfinite(value) else None


def default_tolerance(dtype: torch.dtype) -> float:
    return TOLERANCE.get(dtype, TOLERANCE[torch.bfloat16])


def parity_conversations(config: RunConfig, data: Sequence[str] | None, count: int) -> list[Conversation]:
    """The first `count` records of `data` (read with the checkpoint's data options), else built-in prompts; the
    system prompt is the one chat uses (generate.system, else data.system). Replies are greedy whatever the
    `generate:` sampling settings: parity compares the two models' likeliest tokens."""
    system = config.generate.system_or(config.data)
    if data:
        options = config.data.model_copy(update={"system": system})
        records = read_data(list(data), options, require_response=False).conversations
        return [split_reference(record)[0] for record in records[:count]]
    roles = ("user", "assistant")
    conversations = []
    for k, texts in enumerate(BUILTIN_PROMPTS[:count]):
        turns = [Turn(roles[i % 2], text) for i, text in enumerate(texts)]
        conversations.append(Conversation(turns, Source("<parity>", index=k), system=system))
    return conversations


def run_model(
    model: Any,
    tokenizer: Any,
    template: Template,
    conversations: Sequence[Conversation],
    tokenize_options: TokenizeOptions,
    max_new_tokens: int,
    forced_replies: Sequence[Sequence[int]] | None = None,
) -> Outputs:
    """Greedy replies with chat's stop ids, and the logits over each prompt followed by `forced_replies`
    (the adapter's replies; by default this model's own)."""
    prompt_ids = encode_prompts(conversations, tokenizer, template, tokenize_options)
    stops = find_stops(model, tokenizer, template)
    pad_id = pad_id_of(tokenizer, stops)
    config = generation_config(model, SamplingOptions(max_new_tokens=max_new_tokens), stops, pad_id)
    reply_ids, replies = [], []
    for ids in prompt_ids:
        input_ids = torch.tensor([ids], device=model_device(model))
        with torch.inference_mode():
            new = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
            )
        reply = up_to_stop(new[0, len(ids) :].tolist(), stops.eos_ids)
        reply_ids.append(reply)
        replies.append(finish_text(tokenizer, reply, stops, pad_id)[0])
    forced = reply_ids if forced_replies is None else forced_replies
    logits = sequence_logits(model, [list(p) + list(r) for p, r in zip(prompt_ids, forced, strict=True)])
    return Outputs(prompt_ids, reply_ids, replies, logits)


def up_to_stop(ids: list[int], eos_ids: frozenset[int]) -> list[int]:
    end = next((i for i, token in enumerate(ids) if token in eos_ids), None)
    return ids if end is None else ids[: end + 1]


def sequence_logits(model: Any, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """One unpadded forward pass per sequence: its logits, float32 on the CPU."""
    device = model_device(model)
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu() for ids in sequences]


def render_check(tokenizer: Any, template: Template, conversation: Conversation) -> str:
    """Whether `tokenizer`'s chat template renders the generation prompt as `template` does."""
    if conversation.tools or any(turn.tool_calls for turn in conversation.turns):
        return "not covered (tools)"
    messages = conversation.to_json()["messages"]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rendered = "".join(s.text for s in template.render(conversation, True))
    lead = template.leading_bos() if hasattr(template, "leading_bos") else ""  # the BOS tokenization puts first
    return "same" if text == lead + rendered else "text differs"


def parting(adapter: list[int], merged: list[int]) -> int | None:
    """The first index where two greedy replies differ, or None."""
    for j in range(max(len(adapter), len(merged))):
        if j >= len(adapter) or j >= len(merged) or adapter[j] != merged[j]:
            return j
    return None


def compare_prompt(adapter: Outputs, merged: Outputs, k: int) -> tuple[float, int | None, float | None]:
    """(max logit difference, where the greedy replies part, the adapter's logit gap there) for prompt k."""
    a, m = adapter.logits[k], merged.logits[k]
    difference = (a - m).abs().max().item() if a.shape == m.shape else float("inf")
    j = parting(adapter.reply_ids[k], merged.reply_ids[k])
    if j is None or j >= len(adapter.reply_ids[k]) or j >= len(merged.reply_ids[k]) or a.shape != m.shape:
        return difference, j, None
    position = len(adapter.prompt_ids[k]) + j - 1  # the logits that predict reply token j
    gap = (a[position, adapter.reply_ids[k][j]] - a[position, merged.reply_ids[k][j]]).item()
    return difference, j, gap


def compare(
    conversations: Sequence[Conversation],
    adapter: Outputs,
    merged: Outputs,
    renders: Sequence[str],
    *,
    tolerance: float,
    dtype: torch.dtype,
    max_new_tokens: int,
) -> ParityReport:
    rows = []
    for k, conversation in enumerate(conversations):
        render = renders[k]
        difference, parted_at, gap = compare_prompt(adapter, merged, k)
        if adapter.prompt_ids[k] != merged.prompt_ids[k]:  # the written tokenizer encodes the prompt otherwise
            difference, render = float("inf"), "tokens differ"
        rows.append(
            PromptParity(
                prompt=conversation.turns[-1].content,
                tokens=adapter.logits[k].shape[0],
                max_logit_diff=difference,
                adapter_reply=adapter.replies[k],
                merged_reply=merged.replies[k],
                parted_at=parted_at,
                gap=gap,
                prompt_render=render,
            )
        )
    return ParityReport(rows, tolerance, str(dtype).removeprefix("torch."), max_new_tokens)
