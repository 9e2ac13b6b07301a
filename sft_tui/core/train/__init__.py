"""Training, only ever run by the worker: the recipe, its callback, commands in (control), the
pre-flight that refuses doomed runs, resume decisions, and test-only fault hooks.
"""
