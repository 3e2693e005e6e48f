"""Text generation for serving: a KV-cache engine with continuous batching over any causal language model."""
