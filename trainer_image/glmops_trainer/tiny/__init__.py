"""Tiny, randomly initialised stand-ins for GLM-4.7 parts (tokenizer, models) used by tests and the demo."""
