"""Clinical preprocessing before a model runs: constant-background removal, rigid registration of the
sequences onto the first, brain extraction (deepbet), N4 bias correction (see :mod:`.chain`)."""
