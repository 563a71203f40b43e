"""The Emu3.5 model layer: pure torch, no serving dependencies (DESIGN.md §4).

Public entry points:
- :class:`services.model.config.Emu35Config` and :func:`services.model.loader.load_model`
- :class:`services.model.text_tokenizer.TextTokenizer`
- :mod:`services.model.templates` (prompts for every task)
- :mod:`services.model.image_tokens` (image token layout, sizes, smart_resize)
- :class:`services.model.ibq.VisionTokenizer` (IBQ encode/decode)
"""
