"""Prompt embeddings for SDXL through compel, cached so each prompt is encoded once.

Base pipelines use both text encoders (compel's CompelForSDXL settings: penultimate hidden states,
not normalised; pooled from the second encoder). The refiner has only `text_encoder_2` (compel's
SDXL helper fails there), so it gets the second encoder's half alone. Long prompts are not
truncated (compel encodes 77-token chunks and concatenates them); positive and negative are padded
to the same length, as diffusers requires.

Two caches, both LRU:
- results, keyed by (encoder set, model key, prompt, negative, syntax);
- each text encoder's own output, keyed by the encoder object and its LoRA state. The refiner
  shares `text_encoder_2` with the base, so refining a draft reuses the base's encoding: N drafts
  and their refine run each text encoder once per distinct (prompt, negative).
Cached tensors are shared: treat them as read-only.

An empty negative prompt follows diffusers: a pipeline configured with
`force_zeros_for_empty_prompt` (SDXL base) gets zero negative embeddings, others encode "".
Pooled embeddings come from compel, which encodes the prompt text as written (compel syntax
included) through the second encoder, truncated to 77 tokens, as InvokeAI does.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
from compel import Compel, ReturnedEmbeddingsType
from compel.prompt_parser import PromptParser

from pipelines.prompt_syntax import to_compel
from pipelines.recipe import MAX_PROMPT_CHUNKS

CHUNK_TOKENS = 75  # a CLIP chunk is 77 tokens: start, 75 of text, end


@dataclass(frozen=True)
class PromptEmbeds:
    prompt_embeds: torch.Tensor  # (1, tokens, width)
    negative_prompt_embeds: torch.Tensor  # same shape
    pooled_prompt_embeds: torch.Tensor  # (1, projection)
    negative_pooled_prompt_embeds: torch.Tensor

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a diffusers SDXL pipeline call."""
        return {
            "prompt_embeds": self.prompt_embeds,
            "negative_prompt_embeds": self.negative_prompt_embeds,
            "pooled_prompt_embeds": self.pooled_prompt_embeds,
            "negative_pooled_prompt_embeds": self.negative_pooled_prompt_embeds,
        }


@dataclass(frozen=True)
class _EncoderOutput:
    embeds: torch.Tensor
    negative_embeds: torch.Tensor | None  # None: the caller zeroes the negative
    pooled: torch.Tensor | None
    negative_pooled: torch.Tensor | None


class _LRU:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: Hashable, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _lora_state(module: torch.nn.Module) -> tuple:
    """What changes a text encoder's output without changing the object: PEFT adapters (which are
    active, their scales, whether merged into the weights)."""
    state = []
    for name, sub in module.named_modules():
        scaling = getattr(sub, "scaling", None)
        if isinstance(scaling, dict) and scaling:
            active = getattr(sub, "active_adapters", ())
            state.append(
                (
                    name,
                    tuple(sorted(scaling.items())),
                    tuple(active) if isinstance(active, (list, tuple)) else (active,),
                    bool(getattr(sub, "merged", False)),
                    bool(getattr(sub, "disable_adapters", False)),
                )
            )
    return tuple(state)


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> Any:
    """compel's parse (pyparsing: ~60 ms a prompt), once per text; the result is only read."""
    return PromptParser().parse_conjunction(text)


def _check_parses(text: str, field: str) -> Any:
    try:
        return _parse(text)
    except Exception as exc:  # pyparsing and compel raise various exception types
        shown = text if len(text) <= 200 else f"{text[:200]}…"
        raise ValueError(f"{field}: compel cannot parse {shown!r} ({exc})") from None


def _fragment_texts(node: Any) -> list[str]:
    """The plain text of a parsed compel prompt (fragments of flattened prompts, blends, swaps)."""
    if isinstance(getattr(node, "text", None), str):
        return [node.text]
    return [
        t
        for attr in ("children", "prompts", "original", "edited")
        for c in getattr(node, attr, ()) or ()
        for t in _fragment_texts(c)
    ]


def _check_chunks(tokenizer: Any, conjunction: Any, field: str) -> None:
    """At most MAX_PROMPT_CHUNKS 77-token chunks to encode (each `.and()` part, e.g. an A1111 BREAK, starts a
    chunk): the cross-attention cost of every UNet step grows with them. Before any model work."""
    chunks = 0
    for prompt in conjunction.prompts:
        tokens = len(tokenizer.tokenize(" ".join(_fragment_texts(prompt))))
        chunks += max(1, -(-tokens // CHUNK_TOKENS))
    if chunks > MAX_PROMPT_CHUNKS:
        raise ValueError(
            f"{field}: encodes to {chunks} chunks of 77 tokens, over the limit of {MAX_PROMPT_CHUNKS} "
            f"({MAX_PROMPT_CHUNKS * CHUNK_TOKENS} tokens, fewer with BREAKs); shorten it"
        )


def _pad_tokens(
    a: torch.Tensor, b: torch.Tensor, pad_a: torch.Tensor, pad_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the shorter of two (1, tokens, width) tensors with its encoder's empty-prompt chunks."""
    while a.shape[1] < b.shape[1]:
        a = torch.cat([a, pad_a], dim=1)
    while b.shape[1] < a.shape[1]:
        b = torch.cat([b, pad_b], dim=1)
    return a, b


class PromptEncoder:
    """Encodes (prompt, negative) pairs for SDXL base and refiner pipelines, with LRU caches."""

    def __init__(self, max_entries: int = 32) -> None:
        self._results = _LRU(max_entries)
        self._encoder_outputs = _LRU(max_entries * 2)
        self._compels: dict[int, tuple[weakref.ref, tuple, Compel]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        with self._lock:
            self._results.clear()
            self._encoder_outputs.clear()
            self._compels.clear()

    # -- public ------------------------------------------------------------------------------------

    def encode_base(self, pipe: Any, prompt: str, negative: str, syntax: str, model_key: str) -> PromptEmbeds:
        """Both text encoders, concatenated along the feature axis (as diffusers' encode_prompt)."""
        return self._encode("base", pipe, prompt, negative, syntax, model_key)

    def encode_refiner(self, pipe: Any, prompt: str, negative: str, syntax: str, model_key: str) -> PromptEmbeds:
        """`text_encoder_2` only (the SDXL refiner has no first encoder)."""
        return self._encode("refiner", pipe, prompt, negative, syntax, model_key)

    # -- internals ---------------------------------------------------------------------------------

    def _encode(self, kind: str, pipe: Any, prompt: str, negative: str, syntax: str, model_key: str) -> PromptEmbeds:
        # 1. validate and translate: user errors before any model work
        for field, text in (("prompt", prompt), ("negative_prompt", negative)):
            if not isinstance(text, str):
                raise ValueError(f"{field}: must be a string (got {type(text).__name__})")
        positive_text, negative_text = to_compel(prompt, syntax), to_compel(negative, syntax)
        parsed = _check_parses(positive_text, "prompt"), _check_parses(negative_text, "negative_prompt")
        if getattr(pipe, "text_encoder_2", None) is None:
            raise ValueError("this pipeline has no text_encoder_2: not an SDXL pipeline")
        for conjunction, field in zip(parsed, ("prompt", "negative_prompt")):
            _check_chunks(pipe.tokenizer_2, conjunction, field)
        if kind == "base" and getattr(pipe, "text_encoder", None) is None:
            raise ValueError("encode_base needs a pipeline with both text encoders; use encode_refiner")
        zero_negative = not negative.strip() and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))

        encoders = [(pipe.tokenizer_2, pipe.text_encoder_2)]
        if kind == "base":
            encoders.insert(0, (pipe.tokenizer, pipe.text_encoder))
        with self._lock:
            states = tuple((id(te), _lora_state(te)) for _, te in encoders)
            key = (kind, model_key, prompt, negative, syntax, zero_negative, states)
            cached = self._results.get(key)
            if cached is not None:
                self.hits += 1
                return cached
            self.misses += 1
            # 2. each encoder once per distinct text (shared text_encoder_2 → shared result)
            outputs = [
                self._encoder_output(
                    tokenizer,
                    te,
                    state,
                    positive_text,
                    None if zero_negative else negative_text,
                    pooled=te is pipe.text_encoder_2,
                )
                for (tokenizer, te), state in zip(encoders, states)
            ]
            result = self._combine(outputs, encoders)
            self._results.put(key, result)
            return result

    def _compel(self, tokenizer: Any, text_encoder: torch.nn.Module, state: tuple, pooled: bool) -> Compel:
        entry = self._compels.get(id(text_encoder))
        if entry is not None and entry[0]() is text_encoder and entry[1] == state:
            return entry[2]
        compel = Compel(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            truncate_long_prompts=False,
            requires_pooled=pooled,
        )
        self._compels[id(text_encoder)] = (weakref.ref(text_encoder), state, compel)
        return compel

    def _encoder_output(
        self,
        tokenizer: Any,
        text_encoder: torch.nn.Module,
        state: tuple,
        positive: str,
        negative: str | None,
        pooled: bool,
    ) -> _EncoderOutput:
        compel = self._compel(tokenizer, text_encoder, state, pooled)
        embeds, pooled_embeds = self._encode_text(compel, text_encoder, state, positive, pooled)
        if negative is None:
            return _EncoderOutput(embeds, None, pooled_embeds, None)
        negative_embeds, negative_pooled = self._encode_text(compel, text_encoder, state, negative, pooled)
        embeds, negative_embeds = compel.pad_conditioning_tensors_to_same_length([embeds, negative_embeds])
        return _EncoderOutput(embeds, negative_embeds, pooled_embeds, negative_pooled)

    def _encode_text(
        self, compel: Compel, text_encoder: torch.nn.Module, state: tuple, text: str, pooled: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One text through one encoder, cached per (encoder and its LoRA state, text)."""
        key = (state, pooled, text)
        cached = self._encoder_outputs.get(key)
        if cached is not None and cached[0]() is text_encoder:
            return cached[1]
        with torch.no_grad():
            result = compel.build_conditioning_tensor(text)
        value = result if pooled else (result, None)
        self._encoder_outputs.put(key, (weakref.ref(text_encoder), value))
        return value

    def _combine(self, outputs: list[_EncoderOutput], encoders: list) -> PromptEmbeds:
        if len(outputs) == 2 and outputs[0].embeds.shape[1] != outputs[1].embeds.shape[1]:
            # the two tokenizers split the text differently: pad as CompelForSDXL does
            outputs = self._pad_between_encoders(outputs, encoders)
        embeds = torch.cat([o.embeds for o in outputs], dim=-1)
        pooled = outputs[-1].pooled
        if outputs[-1].negative_embeds is None:
            negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            negative = torch.cat([o.negative_embeds for o in outputs], dim=-1)
            negative_pooled = outputs[-1].negative_pooled
        return PromptEmbeds(embeds, negative, pooled, negative_pooled)

    def _pad_between_encoders(self, outputs: list[_EncoderOutput], encoders: list) -> list[_EncoderOutput]:
        (tok1, te1), (tok2, te2) = encoders
        with torch.no_grad():
            empty1 = self._compel(tok1, te1, (id(te1), _lora_state(te1)), False).conditioning_provider.empty_z
            empty2 = self._compel(tok2, te2, (id(te2), _lora_state(te2)), True).conditioning_provider.empty_z
        first, second = outputs
        e1, e2 = _pad_tokens(first.embeds, second.embeds, empty1, empty2)
        n1, n2 = first.negative_embeds, second.negative_embeds
        if n1 is not None:
            n1, n2 = _pad_tokens(n1, n2, empty1, empty2)
        return [
            _EncoderOutput(e1, n1, first.pooled, first.negative_pooled),
            _EncoderOutput(e2, n2, second.pooled, second.negative_pooled),
        ]
