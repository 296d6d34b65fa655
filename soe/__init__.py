"""SoE: nearline batch user embeddings from sequences of events.

The core package holds what every stage shares: the typed configuration (`soe.config`), the
versioned data contracts (`soe.contracts`), the event validator (`soe.validation`), the on-disk
layout of one data root (`soe.layout`), atomic publication of outputs (`soe.atomic`), the data
sources (`soe.datasets`) and the `soe` command line (`soe.cli`).
"""

__version__ = "0.1.0"
