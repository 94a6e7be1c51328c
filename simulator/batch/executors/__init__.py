"""Batch executors: where the points of a batch run (``local`` processes, a ``dask`` cluster), by name."""
