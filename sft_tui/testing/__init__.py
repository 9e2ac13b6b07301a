"""Fixtures for tests and benchmarks (synthetic runs, a toy tokenizer, waiting helpers).

Not shipped in the wheel: nothing in the app imports this package.
"""
