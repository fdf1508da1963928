"""Running cases end to end: one case (read, segment, classify, evaluate, write) and a cohort on Dask."""
