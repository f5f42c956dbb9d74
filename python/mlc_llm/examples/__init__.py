"""Runnable copies of the MLC LLM quick-start examples, pointed at the embedded default model."""
