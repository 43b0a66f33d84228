"""The Atelier web UI (Gradio Blocks), a front end over atelier.studio; `atelier serve` starts it."""
