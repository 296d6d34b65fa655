"""Batch inference: stream sequence shards through an encoder, write embedding shards."""
