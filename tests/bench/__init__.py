"""The benchmark's parts, one module per measurement; tests/bench_chat.py runs them all."""
