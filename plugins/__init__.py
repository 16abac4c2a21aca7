"""The shared plugin layer, used by every stage: the model registry, weight sources and encoders (models), the
dataset adapters, readers and input rules (data), and the expert stages other packages provide (entry points).

It imports only ``stores`` (the layer below); the stages (``extract``, ``rag``) and ``train`` import it, never the
other way round (docs/architecture.md, tests/test_layers.py).
"""
