"""Build areas next to an object store are never left to grow: the area of a killed build that can
no longer commit (its store was rebuilt with other options) is removed by the next build."""

from __future__ import annotations

import pytest

import zarrtok

from ._helpers import KW, build
from .test_remote_resume import _killed_remote_build, setup  # noqa: F401 - the module fixture

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_area_of_a_killed_build_is_removed_by_a_different_rebuild(setup, s3, tokenizer_dir):  # noqa: F811
    _, files, ref = setup
    bucket, url = _killed_remote_build(s3, files, tokenizer_dir)
    assert any("zarrtok-build-" in k for k in s3.list_keys(bucket))
    # other layout options: another plan key, so not a resume; overwrite clears the dead build's root
    store = build(files, tokenizer_dir, url, storage_options=s3.storage_options, overwrite=True,
                  shard_size=KW["shard_size"] * 2)
    assert store.num_tokens("train") == ref.num_tokens("train")
    keys = s3.list_keys(bucket)
    assert not any("zarrtok-build-" in k or "zarrtok-lock" in k for k in keys), sorted(keys)[:10]
    assert zarrtok.open(url, storage_options=s3.storage_options).verify(progress=False).ok
