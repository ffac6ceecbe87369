"""The web playground (`tunellm ui`): chat, label, train and evaluate pages, a thin layer over the CLI's functions.

Modules without gradio (store, records, paths, runs) are importable without the `ui` extra.
"""
