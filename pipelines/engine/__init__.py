"""Generation: one entry point per mode (draft, refine, img2img, ControlNet), its stages, step
previews, samplers, prompt encoding and the watermark. Import the modules themselves; this file stays
empty so that importing `pipelines.engine.x` loads nothing heavy it does not need."""
