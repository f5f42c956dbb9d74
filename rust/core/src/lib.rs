//! mlc_core: the engine behind the `mlc_llm` Python API, with no Python and no HTTP in it.
