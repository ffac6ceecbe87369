"""The web playground: one gradio app with the Chat, Label, Train and Evaluate pages.

Every page is a thin layer over what the CLI runs: chat replies are `tunellm.infer.chat` sessions,
records are read by `tunellm.data.read`, training and evaluation are `tunellm train` and
`tunellm eval --compare` subprocesses. Paths typed or picked on a page must lie under the root folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunellm.ui import chat, evaluate, label, label_view, train, train_view
from tunellm.ui.paths import data_files
from tunellm.ui.store import LabelStore

STORE_FILE = ".tunellm/labels.sqlite"


@dataclass(frozen=True)
class Settings:
    root: Path
    runs: Path
    store: Path | None = None  # default: <root>/.tunellm/labels.sqlite
    device: str | None = None


def build_app(settings: Settings) -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    root, runs = settings.root.resolve(), settings.runs.resolve()
    store = LabelStore(settings.store or root / STORE_FILE)
    models = chat.Models(runs, device=settings.device)

    def choose_files() -> list[str]:
        return data_files(root)

    with gr.Blocks(title="tunellm") as demo:
        gr.Markdown(f"## tunellm playground\nroot folder `{root}` · runs `{runs}`")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat.build(models)
            with gr.Tab("Label", id="label"):
                label_view.LabelView(label.LabelPage(store, root), demo)
            with gr.Tab("Train", id="train"):
                train_view.TrainView(root, runs, choose_files, demo)
            with gr.Tab("Evaluate", id="evaluate"):
                evaluate.build(root, runs, lambda: train.list_runs(runs), choose_files, demo)
    return demo


def launch(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    block: bool = True,
) -> Any:
    """Serve the app; `block=False` returns at once (tests), with the app's URL in `demo.local_url`."""
    demo = build_app(settings)
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        prevent_thread_lock=not block,
        quiet=not block,
        share=False,
        show_error=True,
        footer_links=[],
        run_history=False,  # gradio would keep every input and output (labelled data too) in localStorage
    )
    return demo
