"""The Atelier web UI (Gradio Blocks). Nothing imports this package."""
