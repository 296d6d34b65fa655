"""The shared base of SoE: what every stage uses and nothing above it.

* `contracts`       the versioned Arrow schemas (event, sequence, embedding, neighbours).
* `validation`      the event validator (rules written once on Arrow).
* `layout`          every path under the one data root; hour constants, intervals, the spelling of times.
* `atomic`          temp dir -> ``_SUCCESS`` marker -> rename: readers trust only marked dirs.
* `sequence_state`  the layered per-user sequence state, read without Spark.
* `datasets`        the synthetic log, MovieLens-100K, reading event partitions.
* `embeddings`      the published embedding snapshots (shards, markers, newest-snapshot-wins reads).
* `hashing`         splitmix64, the one 64-bit mix of ids (Redis buckets, hashed tables, shard split).
* `progress`        progress bars of long batch steps.
* `section`         the base class of every config section; `settings` the base sections (data, events).

The base imports no component (pipelines, encoder, store) and no composition (soe): the layer
contracts in pyproject.toml (`lint-imports`) check it.
"""
