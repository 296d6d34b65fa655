"""SoE: nearline batch user embeddings from sequences of events.

The core package holds what every stage shares: the typed configuration (`soe.config`), the
versioned data contracts (`core.contracts`), the event validator (`core.validation`), the on-disk
layout of one data root (`core.layout`), atomic publication of outputs (`core.atomic`), the data
sources (`core.datasets`) and the `soe` command line (`soe.cli`).
"""

__version__ = "0.1.0"
