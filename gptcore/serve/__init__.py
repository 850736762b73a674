"""`gptcore serve`: the OpenAI-compatible HTTP server, the batcher that generates for all its
requests, and the chat page."""
