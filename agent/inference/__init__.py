"""Local inference: the model pool and the OpenAI-compatible HTTP API."""
