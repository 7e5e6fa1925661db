"""NIR (the Neuromorphic Intermediate Representation, https://neuroir.org): out of and into gee-deploy.

* :mod:`.writer`: a model as a NIR graph of the folded dense network; :mod:`.export` writes and validates the
  file (`gee-deploy export --format nir`, dispatched by :mod:`gee_deploy.formats`).
* :mod:`.executor`: the spec-only NIR executor, an independent reference that runs a NIR graph step by step.
* :mod:`.validate`: a written NIR file run by the executor against the PyTorch model before it is kept.
* :mod:`.importer` and :mod:`.convert`: any framework's NIR file as a T-unrolled ONNX graph
  (`gee-deploy export MODEL.nir`, with the :class:`.options.NIRImportOptions`), validated against the executor.

Conventions per framework (threshold rule, dt, input layout): docs/nir.md.
"""
