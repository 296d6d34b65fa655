"""Sequence encoder: the user-action-as-token transformer, training, evaluation and batch inference."""
