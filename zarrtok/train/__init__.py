"""Training: window arithmetic, :class:`TokenDataset`, read-ahead, epoch orders, mixtures, the global
batch sampler and :class:`TokenLoader`. The only package that imports torch; reads tokens only
through the :class:`~zarrtok.read.source.TokenSource` protocol."""
