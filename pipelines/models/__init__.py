"""Model files: loading (hub id, diffusers folder, single .safetensors), A1111/ComfyUI model folders,
LoRA, ControlNet, preprocessors and the offline tiny model. Kept free of imports on purpose."""
