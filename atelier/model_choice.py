"""Which models to use when the user did not say, and the offline tiny model's writer. Light: nothing
heavy is imported until a function runs."""

from __future__ import annotations

from pathlib import Path

from atelier.requests import ModelChoice

TINY = "tiny"


def write_tiny_model(directory: Path, *, single_file: bool = False) -> dict[str, str]:
    """The offline random-weight SDXL base and refiner as diffusers folders (and, with `single_file`, as
    A1111-layout .safetensors files too); their paths by name."""
    from pipelines.models.single_file import write_single_file
    from pipelines.models.tiny_model import write_tiny_model as write

    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a folder")
    base, refiner = write(directory)
    paths = {"base": str(base), "refiner": str(refiner)}
    if single_file:
        paths["base_single_file"] = str(write_single_file(base, directory / "base.safetensors"))
        paths["refiner_single_file"] = str(write_single_file(refiner, directory / "refiner.safetensors"))
    return paths


def choose_models(home: Path, base: str | None = None, refiner: str | None = None) -> ModelChoice:
    """What to load when the user did not say: real SDXL weights if any are here, else the tiny demo.

    Looks in the models folder (A1111 or ComfyUI layout, under $ATELIER_MODELS or <home>/models)
    and in the Hugging Face cache; never downloads.
    """
    from pipelines.models.loading import DEFAULT_BASE, DEFAULT_REFINER, locate_model
    from pipelines.models.model_files import models_root

    if base is None:
        models = models_root(home)
        checkpoints = models.list_models("checkpoint") if models else []
        if checkpoints:
            base = str(models.resolve_checkpoint(checkpoints[0]))
        elif _in_hub_cache(DEFAULT_BASE):
            base = DEFAULT_BASE
        else:
            base = TINY
    if refiner is None:
        if base == TINY:
            refiner = TINY
        elif _in_hub_cache(DEFAULT_REFINER):
            refiner = DEFAULT_REFINER
    if refiner == "base":
        refiner = None
    for spec in (base, refiner):  # a wrong name or file is refused here, before torch is imported
        if spec is not None:
            locate_model(home, spec)
    return ModelChoice(base=base, refiner=refiner, demo=base == TINY)


def _in_hub_cache(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "model_index.json"), str)
