"""Spark sequence pipeline: validate events, keep each user's last N events, shard active users,
build training sets."""
