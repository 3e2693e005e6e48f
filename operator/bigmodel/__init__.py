"""bigmodel-operator: train and serve large PyTorch models on Ray clusters from Kubernetes resources."""

from bigmodel.version import VERSION as __version__

__all__ = ["__version__"]
