"""Prompt embeddings through compel on the tiny SDXL base and refiner, checked against diffusers."""

from __future__ import annotations

import pytest
import torch

from pipelines.engine.prompt_encoding import PromptEncoder

PROMPT, NEGATIVE = "a photo of a cat on a red sofa", "blurry, lowres"


@pytest.fixture(scope="session")
def tiny_pipes(tiny_model_dir):
    """The session's tiny model loaded by diffusers directly (its own objects: no ModelCache, no LoRA state)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base_dir, refiner_dir = tiny_model_dir / "base", tiny_model_dir / "refiner"
    base = StableDiffusionXLPipeline.from_pretrained(base_dir)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        refiner_dir, text_encoder_2=base.text_encoder_2, vae=base.vae
    )
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
    return base, refiner


@pytest.fixture()
def base(tiny_pipes):
    return tiny_pipes[0]


@pytest.fixture()
def refiner(tiny_pipes):
    return tiny_pipes[1]


def _diffusers(pipe, prompt, negative=None):
    with torch.no_grad():
        return pipe.encode_prompt(prompt, negative_prompt=negative, device="cpu")


def _assert_equal(ours, theirs):
    for name, a, b in zip(ours.as_kwargs(), ours.as_kwargs().values(), theirs):
        assert a.shape == b.shape, name
        assert torch.equal(a, b), name


def _embeds(pipe, prompt, negative=NEGATIVE, syntax="compel", encoder=None):
    encoder = encoder or PromptEncoder()
    encode = encoder.encode_refiner if pipe.text_encoder is None else encoder.encode_base
    return encode(pipe, prompt, negative, syntax, "tiny")


def _cat_positions(pipe, prompt, word="cat"):
    ids = pipe.tokenizer_2(prompt, padding="max_length", max_length=77).input_ids
    (word_id,) = pipe.tokenizer_2(word, add_special_tokens=False).input_ids
    return [i for i, t in enumerate(ids) if t == word_id]


# -- unweighted prompts are exactly diffusers' encode_prompt ------------------------------------


@pytest.mark.parametrize("negative", [NEGATIVE, ""])
def test_unweighted_base_equals_encode_prompt(base, negative):
    ours = _embeds(base, PROMPT, negative)
    # diffusers' default for "no negative prompt" is None: zeros on the SDXL base
    _assert_equal(ours, _diffusers(base, PROMPT, negative or None))
    if not negative:
        assert not ours.negative_prompt_embeds.any() and not ours.negative_pooled_prompt_embeds.any()


@pytest.mark.parametrize("negative", [NEGATIVE, ""])
def test_unweighted_refiner_equals_encode_prompt(refiner, negative):
    ours = _embeds(refiner, PROMPT, negative)
    assert ours.prompt_embeds.shape == (1, 77, refiner.text_encoder_2.config.hidden_size)
    _assert_equal(ours, _diffusers(refiner, PROMPT, negative or None))


def test_base_equals_compel_for_sdxl_with_weights(base):
    from compel import CompelForSDXL

    prompt = "a photo of a (cat)1.3 on a red sofa--"
    theirs = CompelForSDXL(base)(prompt, negative_prompt=NEGATIVE)
    ours = _embeds(base, prompt)
    _assert_equal(ours, (theirs.embeds, theirs.negative_embeds, theirs.pooled_embeds, theirs.negative_pooled_embeds))


# -- weights move the embeddings in the expected direction ---------------------------------------


def test_upweighting_scales_the_word_away_from_the_empty_prompt(base):
    plain = _embeds(base, PROMPT).prompt_embeds
    empty = _diffusers(base, "")[0]
    weighted = _embeds(base, PROMPT.replace("cat", "cat++")).prompt_embeds
    cat = _cat_positions(base, PROMPT)
    assert cat
    others = [i for i in range(77) if i not in cat]
    # compel: weight w at a token's positions gives empty + w · (embedding − empty); others untouched
    expected = empty[:, cat] + 1.1**2 * (plain[:, cat] - empty[:, cat])
    assert torch.allclose(weighted[:, cat], expected, atol=1e-5)
    assert torch.equal(weighted[:, others], plain[:, others])
    distances = [
        (_embeds(base, PROMPT.replace("cat", w)).prompt_embeds - plain).norm().item()
        for w in ("cat+", "cat++", "cat+++")
    ]
    assert 0 < distances[0] < distances[1] < distances[2]


def test_downweighting_moves_towards_the_prompt_without_the_word(base):
    plain = _embeds(base, PROMPT).prompt_embeds
    gone = _embeds(base, PROMPT.replace("cat", "(cat)0")).prompt_embeds
    steps = [_embeds(base, PROMPT.replace("cat", w)).prompt_embeds for w in ("cat-", "cat--", "(cat)0.5")]
    from_plain = [(e - plain).norm().item() for e in steps]
    to_gone = [(e - gone).norm().item() for e in steps]
    assert 0 < from_plain[0] < from_plain[1] < from_plain[2]
    assert to_gone[0] > to_gone[1] > to_gone[2] > 0


def test_a1111_syntax_gives_the_same_embeddings_as_compel(base):
    a1111 = _embeds(base, "a photo of a (cat:1.3) on a [red] sofa", syntax="a1111")
    compel = _embeds(base, "a photo of a (cat)1.3 on a (red)0.9091 sofa")
    _assert_equal(a1111, tuple(compel.as_kwargs().values()))
    assert not torch.equal(a1111.prompt_embeds, _embeds(base, PROMPT).prompt_embeds)


# -- blend, and, long prompts ----------------------------------------------------------------


def test_blend_and_conjunction(base):
    cat, dog = _embeds(base, "a cat").prompt_embeds, _embeds(base, "a dog").prompt_embeds
    blend = _embeds(base, '("a cat", "a dog").blend(1, 1)').prompt_embeds
    conjunction = _embeds(base, '("a cat", "a dog").and()')
    assert blend.shape == (1, 77, 80)
    assert torch.allclose(blend, (cat + dog) / 2, atol=1e-5)  # a lerp of the two
    assert conjunction.prompt_embeds.shape == (1, 154, 80)
    assert torch.equal(conjunction.prompt_embeds, torch.cat([cat, dog], dim=1))  # each part encoded alone
    assert conjunction.negative_prompt_embeds.shape == (1, 154, 80)  # negative padded to match
    cat_heavy = _embeds(base, '("a cat", "a dog").blend(0.8, 0.2)').prompt_embeds
    assert (cat_heavy - cat).norm() < (blend - cat).norm()


LONG = ", ".join(["a red apple"] * 36 + ["a green pear"])  # 149 tokens with start and end


@pytest.mark.parametrize("which", ["base", "refiner"])
def test_long_prompt_keeps_every_token(tiny_pipes, which):
    pipe = tiny_pipes[0] if which == "base" else tiny_pipes[1]
    assert len(pipe.tokenizer_2(LONG).input_ids) == 149  # 147 words and punctuation + start + end
    embeds = _embeds(pipe, LONG)
    assert embeds.prompt_embeds.shape[1] == 2 * 77  # two 77-token chunks, nothing truncated
    assert embeds.negative_prompt_embeds.shape == embeds.prompt_embeds.shape
    changed_end = _embeds(pipe, LONG.replace("green pear", "blue plum")).prompt_embeds
    assert not torch.equal(changed_end[:, 77:], embeds.prompt_embeds[:, 77:])  # the last words count
    assert torch.equal(changed_end[:, :77], embeds.prompt_embeds[:, :77])


def test_refiner_path_with_weights_runs_the_refiner(tiny_pipes):
    base, refiner = tiny_pipes
    embeds = _embeds(refiner, "a (cat)1.4 on a sofa--, " + LONG)
    assert embeds.pooled_prompt_embeds.shape == (1, refiner.text_encoder_2.config.projection_dim)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = refiner(
        image=latents,
        strength=0.5,
        num_inference_steps=2,
        guidance_scale=5.0,
        output_type="latent",
        **embeds.as_kwargs(),
    ).images
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_no_cfg_guidance_works_and_ignores_the_negative(base, guidance):
    def run(**kwargs):
        generator = torch.Generator().manual_seed(3)
        return base(
            height=64,
            width=64,
            num_inference_steps=2,
            guidance_scale=guidance,
            output_type="latent",
            generator=generator,
            **kwargs,
        ).images

    ours = run(**_embeds(base, PROMPT, NEGATIVE).as_kwargs())
    assert torch.equal(ours, run(prompt=PROMPT))
    assert torch.equal(ours, run(**_embeds(base, PROMPT, "something else").as_kwargs()))


# -- the cache: each encoder once per distinct prompt set ---------------------------------------


def test_drafts_and_refine_encode_each_prompt_once(tiny_pipes, count_calls):
    base, refiner = tiny_pipes
    encoder = PromptEncoder()
    with count_calls(te1=base.text_encoder, te2=base.text_encoder_2) as calls:
        first = encoder.encode_base(base, PROMPT, NEGATIVE, "compel", "tiny-base")
        after_first = dict(calls.counts)
        assert after_first["te1"] == 2  # prompt, negative
        assert after_first["te2"] == 4  # prompt, negative, and their pooled embeddings
        for _ in range(4):  # N drafts of the same recipe
            assert encoder.encode_base(base, PROMPT, NEGATIVE, "compel", "tiny-base") is first
        refined = encoder.encode_refiner(refiner, PROMPT, NEGATIVE, "compel", "tiny-refiner")
        encoder.encode_refiner(refiner, PROMPT, NEGATIVE, "compel", "tiny-refiner")
        assert calls.counts == after_first  # the refiner reuses the shared text_encoder_2's work
        assert torch.equal(refined.prompt_embeds, first.prompt_embeds[..., base.text_encoder.config.hidden_size :])
        encoder.encode_base(base, "a photo of a dog", NEGATIVE, "compel", "tiny-base")
        assert calls.counts == {"te1": 3, "te2": 6}  # a new prompt: only the new text is encoded
    assert encoder.hits == 5 and encoder.misses == 3


def test_cache_is_keyed_by_model_and_evicts_oldest(base, count_calls):
    encoder = PromptEncoder(max_entries=2)
    with count_calls(te1=base.text_encoder) as calls:
        a = encoder.encode_base(base, PROMPT, NEGATIVE, "compel", "model-a")
        b = encoder.encode_base(base, PROMPT, NEGATIVE, "compel", "model-b")
        assert a is not b and torch.equal(a.prompt_embeds, b.prompt_embeds)  # other model key, other entry
        for i in range(4):
            encoder.encode_base(base, f"prompt {i}", NEGATIVE, "compel", "model-a")
        before = calls["te1"]
        encoder.encode_base(base, PROMPT, NEGATIVE, "compel", "model-a")
        assert calls["te1"] == before + 1  # evicted: the prompt was encoded again (negative was still cached)


def test_bad_input_fails_before_any_encoder_call(base, count_calls):
    encoder = PromptEncoder()
    with count_calls(te1=base.text_encoder, te2=base.text_encoder_2) as calls:
        with pytest.raises(ValueError, match="prompt: compel cannot parse"):
            encoder.encode_base(base, '("a", "b").blend(0.5)', "", "compel", "tiny")
        with pytest.raises(ValueError, match="prompt_syntax"):
            encoder.encode_base(base, PROMPT, "", "dall-e", "tiny")
        with pytest.raises(ValueError, match="negative weight"):
            encoder.encode_base(base, "(cat:-1)", "", "a1111", "tiny")
        assert calls.counts == {"te1": 0, "te2": 0}
