"""Data: images, video, prompts and training samples."""
