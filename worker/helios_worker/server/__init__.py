"""The worker's HTTP server: an OpenAI-compatible API over the early-exit engine (``helios serve``)."""
