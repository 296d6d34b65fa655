"""`soe report`: one self-contained HTML page per model and time range, from the run manifests and the
model artifact on disk (``data``: what to show; ``svg``: hand-made inline charts; ``page``: the page)."""
