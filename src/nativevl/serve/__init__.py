"""The OpenAI-compatible server: `engine` batches the decoding, `api` speaks HTTP."""
