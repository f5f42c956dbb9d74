"""Running the OpenAI server inside other serving frameworks.

    mlc_llm.serve.integrations.ray     Ray Serve deployments (pip install "mlc_llm[ray]")

Nothing here is imported by `mlc_llm` itself: each module needs its framework installed.
"""
