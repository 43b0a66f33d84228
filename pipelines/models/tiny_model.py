"""A random-weight SDXL-architecture base and refiner, built offline.

Written as ordinary diffusers folders so that tests and the offline demo go through exactly the same
loading code as real SDXL weights. The architecture keeps every SDXL trait the engine relies on:
two text encoders of different widths (pooled projection on the second), `text_time` additional
embeddings (6 size/crop numbers on the base, 5 with the aesthetic score on the refiner), a VAE that
downsamples by 8, and the real CLIP BPE tokenizer (from the open_clip_torch wheel).
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import util as importlib_util
from pathlib import Path

TINY_SEED = 20240601  # weights are random but reproducible: the same folder on every machine
TIME_EMBED_DIM = 8
TE1_HIDDEN, TE2_HIDDEN, TE2_PROJECTION = 32, 48, 16
CLIP_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable-character table (as in OpenAI's and open_clip's tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The standard CLIP vocabulary (49,408 entries) and merge list, from open_clip's shipped BPE file."""
    spec = importlib_util.find_spec("open_clip")  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed: it ships the CLIP BPE vocabulary the tiny model needs")
    bpe = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as packed:
        lines = packed.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols]
    symbols += ["".join(m.split()) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}, merges


def clip_tokenizer_files(dest: Path, *, pad_token: str = "<|endoftext|>") -> Path:
    """Write a CLIP tokenizer folder (vocab.json, merges.txt, configs). SDXL's tokenizer_2 pads with "!"."""
    vocab, merges = clip_vocab_and_merges()
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_MAX_LENGTH, "do_lower_case": True, **special}
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return dest


def _tokenizer(pad_token: str):
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=[tuple(m.split()) for m in merges],
        pad_token=pad_token,
        model_max_length=CLIP_MAX_LENGTH,
    )


def _text_config(hidden: int, projection: int, act: str):
    from transformers import CLIPTextConfig

    vocab, _ = clip_vocab_and_merges()
    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_attention_heads=4,
        num_hidden_layers=3,
        vocab_size=len(vocab),
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=projection,
        hidden_act=act,
        bos_token_id=0,  # as the released SDXL configs: eos_token_id 2 selects the argmax (end-of-text) pooling
        eos_token_id=2,
        pad_token_id=1,
    )


def _unet(cross_attention_dim: int, time_ids: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=time_ids * TIME_EMBED_DIM + TE2_PROJECTION,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),  # four blocks: downsamples by 8, as SDXL's VAE
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=0.13025,
        force_upcast=True,
    )


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    # SDXL's own schedule (betas, spacing, offset), from the config skeleton shipped for single files.
    return EulerDiscreteScheduler.from_pretrained(Path(__file__).parent / "model_configs" / "sdxl_base" / "scheduler")


def write_tiny_model(directory: Path) -> tuple[Path, Path]:
    """Write `directory/base` and `directory/refiner` (diffusers folders) unless already complete."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    directory = Path(directory)
    base_dir, refiner_dir = directory / "base", directory / "refiner"
    if (base_dir / "model_index.json").exists() and (refiner_dir / "model_index.json").exists():
        return base_dir, refiner_dir

    torch.manual_seed(TINY_SEED)
    text_encoder = CLIPTextModel(_text_config(TE1_HIDDEN, TE1_HIDDEN, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(TE2_HIDDEN, TE2_PROJECTION, "gelu"))
    vae = _vae()
    base = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer("<|endoftext|>"),
        tokenizer_2=_tokenizer("!"),
        unet=_unet(TE1_HIDDEN + TE2_HIDDEN, time_ids=6),
        scheduler=_scheduler(),
        add_watermarker=False,
    )
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=_tokenizer("!"),
        unet=_unet(TE2_HIDDEN, time_ids=5),
        scheduler=_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    # Write each into a temp folder and rename, so an interrupted build is never taken as complete.
    for pipe, final in ((base, base_dir), (refiner, refiner_dir)):
        tmp = final.with_name(final.name + ".partial")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        pipe.save_pretrained(tmp, safe_serialization=True)
        if final.exists():
            import shutil

            shutil.rmtree(final)
        tmp.rename(final)
    return base_dir, refiner_dir
