"""Benchmark of an OpenAI-compatible chat endpoint (`mlc_llm bench`).

workload.py builds the prompts, client.py sends one streamed request and times it, runner.py drives
many of them at a concurrency or a request rate, stats.py summarizes the timings, and report.py /
plot.py print, save and draw the summaries.
"""
