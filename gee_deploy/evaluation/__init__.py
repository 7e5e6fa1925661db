"""Evaluation stage: measure deployed graphs against their references.

* :mod:`.runtimes`: every runtime by name: the served ones (:mod:`gee_deploy.serving.runtimes`) and the references
  (PyTorch eager on a checkpoint, the spec-only NIR executor on a NIR file), opened by file suffix.
* :mod:`.bench` (`gee-deploy bench` / `check`) and :mod:`.report`: latency, parity, spikes, energy (eq. 17).
* :mod:`.robustness` (`gee-deploy robustness`, the paper's Fig. 2): accuracy under Gaussian input noise.
* :mod:`.loadtest`: a bounded load generator for the server (benchmarks and tests).

It reads what export wrote (the graph and its :class:`~gee_deploy.spec.ModelSpec`) and runs the runtimes serving
serves; nothing imports it but the commands. Each command builds one frozen options object (``BenchOptions``,
``CheckOptions``, ``RobustnessOptions``, beside the function that takes it) and passes it down unchanged.
"""
