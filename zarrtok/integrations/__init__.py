"""Integrations with training frameworks (imported on demand: each module needs its framework).

* :mod:`zarrtok.integrations.hf` — ``transformers.Trainer`` (+ ``accelerate``): a ``Trainer`` subclass
  that trains from a :class:`~zarrtok.train.loader.TokenLoader`, saves the loader state in every
  checkpoint and resumes exactly.
"""
