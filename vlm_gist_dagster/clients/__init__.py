"""HTTP clients (httpx, async) for chat completions, embeddings and the NimbRo vision servers."""
