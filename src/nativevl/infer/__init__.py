"""Inference: generation over the KV cache."""
