"""The Chat page: the base model or a checkpoint under --runs; streamed multi-turn replies; base vs tuned side by side.

A reply is `tunellm.infer.chat.ChatSession.reply`, built as `tunellm chat` builds it (the checkpoint's
template, system line and data options; the same sampling options), so the page answers what the
command answers for the same settings. The history lives in the page (one per browser tab).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunellm.data.record import Turn
from tunellm.data.tokenize import TokenizeOptions
from tunellm.infer.chat import ChatSession
from tunellm.infer.generate import SamplingOptions
from tunellm.infer.load import InferenceModel, checkpoint_config, is_checkpoint, load_for_inference, resolve_checkpoint
from tunellm.train.checkpoint import list_checkpoints
from tunellm.ui.paths import inside

BASE = "base model"
BASE_OF = "base of the left model (adapter off)"


@dataclass(frozen=True)
class Settings:
    system: str = ""  # blank: the system line training used (as `tunellm chat` without --system)
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int | None = None

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(
            max_new_tokens=int(self.max_new_tokens),
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            seed=self.seed,
        )


def model_choices(runs: Path) -> list[str]:
    """The base model, then every run folder (its best checkpoint) and every checkpoint under `runs`."""
    choices = [BASE]
    if not runs.is_dir():
        return choices
    for folder in sorted(path for path in runs.rglob("*") if path.is_dir() and not path.name.startswith(".")):
        steps = list_checkpoints(folder)
        if steps or (is_checkpoint(folder) and not list_checkpoints(folder.parent)):  # a run, or a lone checkpoint
            choices.append(str(folder.relative_to(runs)))
        choices += [str(step.relative_to(runs)) for step in steps]
    return list(dict.fromkeys(choices))


class Models:
    """Loaded models by choice, the few most recent kept; loading is serialized."""

    def __init__(self, runs: Path, keep: int = 3, device: str | None = None) -> None:
        self.runs = runs
        self.keep = keep
        self.device = device
        self.loaded: OrderedDict[tuple[str, str], InferenceModel] = OrderedDict()
        self.lock = threading.RLock()  # loading "base of X" loads X first

    def get(self, choice: str, left: str | None = None) -> InferenceModel:
        if choice == BASE_OF and left in (None, BASE):
            choice = BASE  # the base model beside itself: one copy
        key = (choice, left or "") if choice == BASE_OF else (choice, "")
        with self.lock:
            if key not in self.loaded:
                self.loaded[key] = self._load(choice, left)
                while len(self.loaded) > self.keep:
                    self.loaded.popitem(last=False)
            self.loaded.move_to_end(key)
            return self.loaded[key]

    def _load(self, choice: str, left: str | None) -> InferenceModel:
        if choice == BASE:
            return load_for_inference(None, device=self.device)
        if choice == BASE_OF:
            checkpoint = resolve_checkpoint(inside(self.runs, str(left)))
            config = checkpoint_config(checkpoint)
            tuned = self.get(str(left))  # the same prompt on both sides: the tuned model's template
            return load_for_inference(
                None, model=config.model.name_or_path, template=tuned.template.name, device=self.device
            )
        return load_for_inference(inside(self.runs, choice), device=self.device)


def session_for(loaded: InferenceModel, settings: Settings, system_from: InferenceModel | None = None) -> ChatSession:
    """A chat session as `tunellm chat` makes one; `system_from` supplies the default system line
    (the tuned model's, when its base answers beside it)."""
    default_system = (system_from or loaded).config.data.system
    return ChatSession(
        loaded.model,
        loaded.tokenizer,
        loaded.template,
        settings.sampling(),
        system=settings.system or default_system,
        tokenize_options=TokenizeOptions.from_config(loaded.config.data),
    )


def stream_reply(
    loaded: InferenceModel,
    history: list[dict[str, str]],
    message: str,
    settings: Settings,
    system_from: InferenceModel | None = None,
) -> Iterator[str]:
    """The reply so far, growing as it streams, to `message` after the `history` turns ({role, content})."""
    session = session_for(loaded, settings, system_from)
    session.turns = [Turn(turn["role"], turn["content"]) for turn in history]  # type: ignore[arg-type]
    text = ""
    for piece in session.reply(message):
        text += piece
        yield text


def message_text(content: Any) -> str:
    """A chatbot message's text (gradio 6 hands content back as a list of {type: text, text} parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def as_history(messages: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": message_text(m["content"])} for m in messages or []]


def build(models: Models) -> None:
    """The page's components and events, inside an open gradio Blocks."""
    import gradio as gr

    with gr.Row():
        left_choice = gr.Dropdown(model_choices(models.runs), value=BASE, label="Model", scale=3)
        right_choice = gr.Dropdown(
            [BASE_OF, *model_choices(models.runs)], value=BASE_OF, label="Second model", visible=False, scale=3
        )
        side_by_side = gr.Checkbox(False, label="Side by side (both answer each prompt)", scale=1)
        refresh = gr.Button("Rescan runs", scale=0)
    with gr.Accordion("Settings", open=False):
        system = gr.Textbox(label="System prompt (blank: the one training used)", lines=2)
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 is greedy)")
            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top_p")
            max_new = gr.Slider(1, 2048, value=128, step=1, label="Max new tokens")
    with gr.Row():
        left = gr.Chatbot(label="Model", height=420, elem_id="chat-left")
        right = gr.Chatbot(label="Second model", height=420, visible=False, elem_id="chat-right")
    message = gr.Textbox(label="Message", placeholder="Type and press Enter", elem_id="chat-message")
    with gr.Row():
        send = gr.Button("Send", variant="primary", elem_id="chat-send")
        clear = gr.Button("New conversation")
    status = gr.Markdown(elem_id="chat-status")

    def respond(text, left_msgs, right_msgs, left_key, right_key, both, system, temperature, top_p, max_new):
        if not text.strip():
            yield left_msgs, right_msgs, "", ""
            return
        settings = Settings(system, temperature, top_p, int(max_new))
        sides = [(left_msgs, left_key, None)] + ([(right_msgs, right_key, left_key)] if both else [])
        shown = [list(left_msgs or []), list(right_msgs or [])]
        for index, (messages, key, of) in enumerate(sides):
            yield shown[0], shown[1], "", f"loading {key} ..."
            try:
                loaded = models.get(key, of)
                tuned = models.get(left_key) if key == BASE_OF else None
            except Exception as error:  # shown on the page, e.g. a checkpoint that does not load
                yield shown[0], shown[1], "", f"**Error:** {error}"
                return
            history = as_history(messages)
            shown[index] = [*history, {"role": "user", "content": text}, {"role": "assistant", "content": ""}]
            for reply in stream_reply(loaded, history, text, settings, system_from=tuned):
                shown[index][-1]["content"] = reply
                yield shown[0], shown[1], "", "answering ..."
        yield shown[0], shown[1], "", ""

    inputs = [message, left, right, left_choice, right_choice, side_by_side, system, temperature, top_p, max_new]
    for event in (message.submit, send.click):
        event(respond, inputs, [left, right, message, status])
    clear.click(lambda: ([], [], ""), None, [left, right, status])
    side_by_side.change(lambda on: (gr.update(visible=on), gr.update(visible=on)), side_by_side, [right, right_choice])
    left_choice.change(lambda: ([], []), None, [left, right])

    def rescan():
        choices = model_choices(models.runs)
        return gr.update(choices=choices), gr.update(choices=[BASE_OF, *choices])

    refresh.click(rescan, None, [left_choice, right_choice])
