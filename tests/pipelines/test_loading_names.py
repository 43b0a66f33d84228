"""What a recipe records as the model's name: re-runs must not depend on the current folder."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.models.loading import ModelCache


def test_a_relative_path_is_recorded_absolute_and_tiny_as_given(model_cache, tmp_path, monkeypatch):
    tiny_base = model_cache.load_base("tiny")
    assert tiny_base.ref.name == "tiny"
    folder = Path(model_cache.home) / "models" / "tiny" / "base"
    monkeypatch.chdir(folder.parent)
    cache = ModelCache(tmp_path, device="cpu")
    loaded = cache.load_base(os.path.join(".", "base"))
    assert loaded.ref.name == str(folder.resolve())
    assert loaded.ref.sha256 == tiny_base.ref.sha256  # same weights, same identity
