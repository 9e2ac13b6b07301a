"""Base models: finding them (discovery), describing them without weights (describe), the memory
estimate, the built-in demo, and the one place that resolves and loads them (load).
"""
