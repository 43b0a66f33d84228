"""What every tab needs: the studio (engine + gallery), the GPU job runner and the UI defaults."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from atelier.requests import ModelChoice
from atelier.studio import Studio
from webui.bindings import Defaults
from webui.jobs import GpuJobs


@dataclass
class Context:
    studio: Studio
    jobs: GpuJobs
    choice: ModelChoice
    defaults: Defaults


def session_of(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "no-session"


def interrupt_handler(ctx: Context):
    """For an Interrupt button: stop this browser session's running job at its next step."""

    def interrupt(request: gr.Request) -> None:
        if not ctx.jobs.interrupt(session_of(request)):
            gr.Info("Nothing of yours is running.")

    return interrupt
