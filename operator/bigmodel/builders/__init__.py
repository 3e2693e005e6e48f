"""Pure renderers: a BigModelJob model in, Kubernetes objects (plain dicts ready to send to the API server) out."""
