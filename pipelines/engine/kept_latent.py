"""The draft's latent, kept on disk so the refiner can resume it after a restart.

A `.safetensors` file holding one latent and, in its header, how far the base got
(`denoising_end`). A latent with denoising_end < 1 is still noisy: only resuming it at exactly that
point (`denoising_start`) continues the base's trajectory. A clean latent (1.0) can only be refined
by re-noising it (`strength`); `refine_kwargs` makes the wrong combination impossible.

A noisy draft's file also holds the model's clean-image estimate at the switch (`clean_estimate`): the
draft's gallery image is a cheap decode of it (`preview` says which, see previews.py), and the full VAE
decode is made from it when the draft is opened, downloaded or used as a source. Files without it (clean
drafts, and drafts made before cheap previews) have a full decode as their image already.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

FORMAT = "atelier.kept_latent.v1"


@dataclass(frozen=True)
class KeptLatent:
    tensor: torch.Tensor  # (channels, height/8, width/8), on the CPU, in the dtype the base produced
    denoising_end: float  # fraction of the schedule the base completed; 1.0 = clean
    clean_estimate: torch.Tensor | None = None  # x̂₀ at the switch, same shape, on the CPU (noisy drafts)
    preview: str = "full"  # how the draft's image was decoded: "full", "taesd-xl" or "vae-half-size"

    def __post_init__(self) -> None:
        if self.tensor.ndim != 3:
            raise ValueError(f"kept latent: expected (channels, height, width), got shape {tuple(self.tensor.shape)}")
        if not 0.0 < self.denoising_end <= 1.0:
            raise ValueError(f"kept latent: denoising_end must be in (0, 1] (got {self.denoising_end})")
        if self.clean_estimate is not None and self.clean_estimate.shape != self.tensor.shape:
            raise ValueError(
                f"kept latent: clean_estimate has shape {tuple(self.clean_estimate.shape)}, "
                f"the latent {tuple(self.tensor.shape)}"
            )

    @property
    def noisy(self) -> bool:
        return self.denoising_end < 1.0

    def refine_kwargs(self, strength: float) -> dict[str, Any]:
        """How an img2img pipeline must treat this latent: resume a noisy one, re-noise a clean one."""
        if self.noisy:
            return {"denoising_start": self.denoising_end}
        return {"strength": strength}

    def to_bytes(self, recipe_json: str = "") -> bytes:
        metadata = {
            "format": FORMAT,
            "denoising_end": repr(self.denoising_end),
            "recipe": recipe_json,
            "preview": self.preview,
        }
        tensors = {"latent": self.tensor.contiguous()}
        if self.clean_estimate is not None:
            tensors["clean_estimate"] = self.clean_estimate.contiguous()
        return save_safetensors(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str = "latent file") -> KeptLatent:
        try:
            tensors = load_safetensors(data)
            header_len = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        except (SafetensorError, ValueError, KeyError, OSError) as exc:
            raise ValueError(f"{name}: not a readable kept latent ({exc})") from None
        if metadata.get("format") != FORMAT or "latent" not in tensors:
            raise ValueError(f"{name}: not an Atelier kept latent (format {metadata.get('format')!r})")
        try:
            denoising_end = float(metadata["denoising_end"])
        except (KeyError, ValueError):
            raise ValueError(f"{name}: kept latent without a valid denoising_end") from None
        return cls(
            tensors["latent"],
            denoising_end,
            clean_estimate=tensors.get("clean_estimate"),
            preview=metadata.get("preview", "full"),
        )
