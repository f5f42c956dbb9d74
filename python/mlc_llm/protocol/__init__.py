"""Request/response models (OpenAI-compatible) and the exception classes shared with the engine."""
