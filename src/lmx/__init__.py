"""lmx: config-driven Transformer language-model experiments on WikiText-2."""

__version__ = "0.1.0"
