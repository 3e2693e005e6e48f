"""The operator process: Kopf handlers (thin), the Kubernetes and Ray clients, settings."""
