"""What a checkpoint folder must not get wrong, as one error type (shared by the name, config and file code)."""

LAYOUTS = ("original", "transformers")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as asked: the message names the file and key."""
