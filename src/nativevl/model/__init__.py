"""The model: InternViT, the Qwen2 decoder and the InternVL composition."""
