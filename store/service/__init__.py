"""The query service (`soe serve`): vectors, neighbours, lookalike and candidates over HTTP."""
