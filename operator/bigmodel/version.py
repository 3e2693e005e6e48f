"""One version for the package, the images and the chart."""

VERSION = "0.1.0"
IMAGE_REPOSITORY = "ghcr.io/bigmodel-operator"
RUNTIME_IMAGE = f"{IMAGE_REPOSITORY}/runtime:{VERSION}"
OPERATOR_IMAGE = f"{IMAGE_REPOSITORY}/operator:{VERSION}"
