"""Event data sources: the synthetic ad/recommendation log generator and MovieLens-100K."""
