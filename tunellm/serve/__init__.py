"""An OpenAI-compatible HTTP server for a base model and any number of trained adapters."""
