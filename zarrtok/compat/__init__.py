"""Compatibility facades over the public API: Archai's ``FastHfDatasetProvider`` (:mod:`.archai`)."""
