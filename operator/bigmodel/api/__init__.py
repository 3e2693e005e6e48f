"""The two custom resources as pydantic models (job.py, service.py): the single source of truth for the CLI, the
operator and the CRDs (crd.py); manifests.py reads them from YAML; wire.py holds every name that crosses a process
boundary. Nothing is imported here, so that `bigmodel.api.wire` costs a process nothing but itself."""
