"""The run directory, the contract between UI, CLI and worker: its files, the event protocol and
its text form, the index of runs, launching workers, their processes, and metrics as series.
"""
