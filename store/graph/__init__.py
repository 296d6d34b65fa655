"""The FAISS user-similarity graph: index build, kNN neighbours, lookalike audiences, ad candidates."""
