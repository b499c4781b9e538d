"""The training stage: a short sequence of named steps (see `loop.fit`)."""
