"""Serving side: the sharded Redis vector store, the FAISS user-similarity graph and the query API."""
