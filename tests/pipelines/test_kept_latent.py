"""The kept latent file: exact round trips, and every way a damaged or foreign file is refused in words."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save as save_safetensors

from pipelines.engine.kept_latent import FORMAT, KeptLatent


def latent(dtype=torch.float32) -> torch.Tensor:
    return torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3)).to(dtype)


def file_with(metadata: dict[str, str], tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    return save_safetensors(tensors or {"latent": latent()}, metadata=metadata)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("end", [1.0, 0.8, 1 / 3, math.nextafter(0.0, 1.0)])
def test_round_trip_keeps_bits_dtype_and_exact_switch(dtype, end):
    kept = KeptLatent(latent(dtype), end)
    again = KeptLatent.from_bytes(kept.to_bytes('{"seed":1}'))
    assert again.tensor.dtype == dtype and torch.equal(again.tensor, kept.tensor)
    assert again.denoising_end == end  # repr() round-trips floats exactly


def test_noisy_latents_resume_and_clean_ones_are_renoised():
    assert KeptLatent(latent(), 0.8).refine_kwargs(0.3) == {"denoising_start": 0.8}
    assert KeptLatent(latent(), 1.0).refine_kwargs(0.3) == {"strength": 0.3}
    assert KeptLatent(latent(), math.nextafter(1.0, 0.0)).noisy and not KeptLatent(latent(), 1.0).noisy


@pytest.mark.parametrize("end", [0.0, -0.5, math.nextafter(1.0, 2.0), 2.0])
def test_denoising_end_outside_zero_one_is_refused(end):
    with pytest.raises(ValueError, match=r"denoising_end must be in \(0, 1\]"):
        KeptLatent(latent(), end)


def test_a_latent_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"expected \(channels, height, width\), got shape \(1, 4, 8, 8\)"):
        KeptLatent(latent().unsqueeze(0), 0.8)


def good_file() -> bytes:
    return KeptLatent(latent(), 0.8).to_bytes()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "draft.safetensors: not a readable kept latent"),
        (b"garbage that is no safetensors file", "not a readable kept latent"),
        (b"\xff" * 8 + b"{}", "not a readable kept latent"),  # a header length far past the end
        (good_file()[:-5], "not a readable kept latent"),  # truncated tensor data
        (good_file()[:40], "not a readable kept latent"),  # truncated header
        (file_with({"format": "someone.else"}), r"not an Atelier kept latent \(format 'someone.else'\)"),
        (file_with({}), r"not an Atelier kept latent \(format None\)"),
        (file_with({"format": FORMAT, "denoising_end": "0.8"}, {"x": latent()}), "not an Atelier kept latent"),
        (file_with({"format": FORMAT}), "kept latent without a valid denoising_end"),
        (file_with({"format": FORMAT, "denoising_end": "most"}), "kept latent without a valid denoising_end"),
        (file_with({"format": FORMAT, "denoising_end": "1.5"}), r"denoising_end must be in \(0, 1\]"),
    ],
)
def test_damaged_or_foreign_files_are_refused_with_a_message(data, message):
    with pytest.raises(ValueError, match=message):
        KeptLatent.from_bytes(data, name="draft.safetensors")


def test_the_recipe_travels_in_the_header():
    data = KeptLatent(latent(), 0.5).to_bytes('{"seed":7}')
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    metadata = {"format": FORMAT, "denoising_end": "0.5", "recipe": '{"seed":7}', "preview": "full"}
    assert header["__metadata__"] == metadata


def test_the_clean_estimate_and_preview_survive_the_round_trip():
    estimate = latent() * 0.5
    kept = KeptLatent(latent(), 0.8, clean_estimate=estimate, preview="taesd-xl")
    again = KeptLatent.from_bytes(kept.to_bytes())
    assert torch.equal(again.clean_estimate, estimate) and again.preview == "taesd-xl"
    plain = KeptLatent.from_bytes(KeptLatent(latent(), 1.0).to_bytes())
    assert plain.clean_estimate is None and plain.preview == "full"


def test_a_file_without_a_preview_entry_was_fully_decoded():
    """Drafts kept before cheap previews have no "preview" in their header."""
    old = KeptLatent.from_bytes(file_with({"format": FORMAT, "denoising_end": "0.8", "recipe": ""}))
    assert old.preview == "full" and old.clean_estimate is None and old.denoising_end == 0.8


def test_a_recipe_is_optional_in_the_header():
    data = KeptLatent(latent(), 1.0).to_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert header["__metadata__"]["recipe"] == ""


def test_a_file_with_no_metadata_at_all_is_refused_as_foreign():
    data = save_safetensors({"latent": latent()})  # no __metadata__ entry
    with pytest.raises(ValueError, match=r"^latent file: not an Atelier kept latent \(format None\)$"):
        KeptLatent.from_bytes(data)  # the default name


def test_a_clean_estimate_of_another_shape_is_refused():
    with pytest.raises(ValueError) as refused:
        KeptLatent(latent(), 0.8, clean_estimate=torch.zeros(4, 8, 16))
    assert str(refused.value) == "kept latent: clean_estimate has shape (4, 8, 16), the latent (4, 8, 8)"
