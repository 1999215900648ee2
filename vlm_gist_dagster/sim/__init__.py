"""Offline simulator: local HTTP servers speaking the OpenAI-compatible and NimbRo vision protocols."""
