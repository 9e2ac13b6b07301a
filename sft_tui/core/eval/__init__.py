"""After training: base-vs-tuned evaluation, generation (playground, chat) and export (model card,
merge, hub, GGUF).
"""
