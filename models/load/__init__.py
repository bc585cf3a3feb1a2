"""Loaders: each turns one checkpoint format into (Config, numpy parameter tree, tokenizer)."""
