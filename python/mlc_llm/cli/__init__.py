"""Command-line entry points (`mlc_llm chat`, `serve`, `bench`, ...)."""
