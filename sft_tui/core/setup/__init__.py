"""What the setup screens show, without any UI: the session (config being built), the training
form, and the words and numbers of the model and data screens.
"""
