"""SoE: nearline batch user embeddings from sequences of events — the composition layer.

`soe` composes the components (pipelines/, encoder/, store/) over the shared base (core/): the one
typed configuration (`soe.config`), the `soe` command line (`soe.cli`) and the flows that the Airflow
DAGs, `soe refresh` and the main job run (`soe.flows`). See docs/architecture.md, "Layers".
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("soe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
