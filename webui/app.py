"""The Atelier web app: the Blocks (one file per tab), the shared GPU queue and the launch settings."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from atelier.requests import ModelChoice  # noqa: E402
from atelier.studio import Studio  # noqa: E402
from webui import (  # noqa: E402
    cli_api,
    controlnet_tab,
    draft_tab,
    fair_queue,
    gallery_tab,
    image_inputs,
    img2img_tab,
    security,
)
from webui.bindings import Defaults, default_size, lora_lists  # noqa: E402
from webui.context import Context, browser_link  # noqa: E402
from webui.jobs import GPU, GpuJobs, words_for_every_error  # noqa: E402

DEMO_BANNER = "demo model with random weights — set --model to an SDXL checkpoint"
QUEUE_SIZE = 16  # jobs waiting at most; one more is told the queue is full
QUEUE_SIZE_ENV = "ATELIER_QUEUE_SIZE"
UPLOADS_KEPT_S = 6 * 3600  # uploads older than this are deleted (checked every hour; all at each start)
CSS = """
#demo-banner { background: #fff3cd; color: #664d03; border: 1px solid #ffe69c; border-radius: 6px; padding: 4px 12px; }
#draft-status, #img2img-status, #cn-status, #gallery-status { font-size: 1.05em; min-height: 1.6em; }
/* Gradio 6 ignores show_progress="hidden" (gradio-app/gradio#12406) and prints its timers ("queue: 1/1 | 12.4/1.1s",
   "0.1s") on every output. The status lines say where a job is in words: no tracker, no fading there; elsewhere
   its spinner stays but not its numbers, whose wait is a guess from past events of any size. */
#draft-status [data-testid="status-tracker"], #img2img-status [data-testid="status-tracker"],
#cn-status [data-testid="status-tracker"], #gallery-status [data-testid="status-tracker"] { display: none !important; }
#draft-status .pending, #img2img-status .pending, #cn-status .pending, #gallery-status .pending { opacity: 1 !important; }
[data-testid="status-tracker"] .meta-text, [data-testid="status-tracker"] .meta-text-center { display: none !important; }
/* Captions carry ids and full seeds: wrap them instead of cutting them off. */
#drafts .caption-label, #gallery-grid .caption-label { white-space: normal; max-width: 100%; overflow: visible; }
"""
# Keyboard, as in A1111 and ComfyUI: Ctrl+Enter (⌘+Enter) makes an image with the visible tab's main
# button. Esc interrupts as A1111's does: only while a job of the visible tab runs or waits, and never when
# the key closes something (a dropdown's list, a dialog, full screen) or a control took it. The jobs hide
# Gradio's progress (webui/context.py), so their status lines say it: a line ending in "…" ("Drafting 4…",
# "Starting…"), a step count ("base model step 3/30"), a queue place ("Waiting — 2nd in the queue"), or a
# line that offers Esc itself (an earlier job of this browser, after a reload).
KEYS_JS = """
() => {
  const visible = (id) => { const el = document.getElementById(id); return el && el.offsetParent !== null ? el : null; };
  const press = (ids) => { for (const id of ids) { const b = visible(id); if (b) { b.click(); return true; } } return false; };
  // Each status line and the Interrupt that stops its jobs (the Gallery's jobs: any Interrupt stops this page's).
  const STOPS = [['draft-status', 'interrupt-button'], ['img2img-status', 'img2img-interrupt'],
                 ['cn-status', 'cn-interrupt'], ['gallery-status', 'interrupt-button']];
  const hasJob = (line) => {
    const tracker = line.querySelector('[data-testid=status-tracker]');
    const progress = tracker && !tracker.classList.contains('hide') && !tracker.querySelector('.error');
    const text = line.innerText.trim();
    const says = /…$|\\bstep \\d+\\/\\d+|\\bin the queue\\b|\\bEsc\\b/.test(text) && !/^(⚠|Interrupted)/.test(text);
    return Boolean(progress) || says;
  };
  // Seen before the control handles the key (it closes its list after this), so an open list still counts.
  let closes = false;
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    const open = [...document.querySelectorAll('[role=listbox], [role=dialog], [aria-modal=true], dialog[open]')];
    const inControl = e.target instanceof Element && e.target.closest('[role=combobox]');
    closes = open.some((el) => el.offsetParent !== null) || Boolean(inControl || document.fullscreenElement);
  }, true);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      if (press(['draft-button', 'img2img-button', 'cn-button'])) e.preventDefault();
    } else if (e.key === 'Escape' && !closes && !e.defaultPrevented) {
      const stop = STOPS.find(([line]) => visible(line) && hasJob(visible(line)));
      const button = stop && document.getElementById(stop[1]);
      if (button) { button.click(); e.preventDefault(); }
    }
  });
}
"""


def set_environment(home: Path) -> None:
    """Before Gradio starts: no analytics, its upload/cache folders inside the home folder, not the cwd."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    cache = Path(home).expanduser().resolve() / "ui-cache"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(cache / "uploads"))
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(cache / "examples"))


def clear_stale_uploads(home: Path) -> None:
    """Uploads left by an earlier run (a killed server never cleans up) are deleted: only in our own
    folder under the home, never a GRADIO_TEMP_DIR the user named. Call it holding the home (its lock)."""
    uploads = Path(home).expanduser().resolve() / "ui-cache" / "uploads"
    if os.environ.get("GRADIO_TEMP_DIR") == str(uploads) and uploads.is_dir():
        shutil.rmtree(uploads, ignore_errors=True)


def queue_size_default() -> int:
    """$ATELIER_QUEUE_SIZE if set (a whole number of at least 1), else QUEUE_SIZE."""
    text = os.environ.get(QUEUE_SIZE_ENV, "").strip()
    if not text:
        return QUEUE_SIZE
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{QUEUE_SIZE_ENV}: expected a whole number of at least 1 (got {text!r})")
    return int(text)


def make_context(studio: Studio, choice: ModelChoice) -> Context:
    width, height = default_size(choice.demo)
    loras, unusable = lora_lists(studio.loras())
    return Context(
        studio=studio,
        jobs=GpuJobs(slots=studio.device_slots),  # 1, or one per GPU worker (--cluster)
        choice=choice,
        defaults=Defaults(models=choice, width=width, height=height, loras=loras, unusable_loras=unusable),
    )


def build_app(ctx: Context, *, queue_size: int = QUEUE_SIZE, per_client: int | None = None) -> gr.Blocks:
    """The app; `queue_size` device jobs may wait, `per_client` of them from one address (default half)."""
    limits = fair_queue.QueueLimits.default_for(queue_size, per_client)
    security.limit_decoded_pixels()  # before Gradio decodes any upload
    with gr.Blocks(title="Atelier", analytics_enabled=False, delete_cache=(3600, UPLOADS_KEPT_S)) as demo:
        if ctx.choice.demo:
            gr.Markdown(f"⚠ {DEMO_BANNER}", elem_id="demo-banner")
        with gr.Tabs() as tabs:
            with gr.Tab("Draft & Refine", id="draft"):
                draft = draft_tab.render(ctx)
            with gr.Tab("Img2Img", id="img2img") as img2img_tab_item:
                img2img = img2img_tab.render(ctx, draft.controls, tabs=tabs, tab=img2img_tab_item)
            with gr.Tab("ControlNet", id="controlnet") as controlnet_tab_item:
                units = controlnet_tab.render(ctx, draft.controls, tabs=tabs, tab=controlnet_tab_item)
            with gr.Tab("Gallery", id="gallery") as gallery_tab_item:
                edit_tabs = gallery_tab.EditTabs(tabs=tabs, img2img=img2img, control_units=units)
                gallery = gallery_tab.render(ctx, draft.controls, edit_tabs, gallery_tab_item)
        linked = demo.load(**browser_link(ctx), api_visibility="private")
        for event in draft.on_load:  # after the link, so the page knows whether a job still running is its own
            linked.then(**event, api_visibility="private")
        send = img2img_tab.send_from_gallery(ctx, img2img, tabs, "img2img")
        for button, generation_id in (
            (draft.send_to_img2img, draft.shown),
            (gallery.send_to_img2img, gallery.detail_id),
        ):
            button.click(
                send, inputs=generation_id, outputs={img2img.source, img2img.parent, tabs}, api_visibility="private"
            )
        cli_api.register(ctx)  # `atelier draft|refine|…` on this server's models, in the same queue
        image_inputs.check_every_upload(demo)  # a file that is no image is refused as it arrives, in words
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    fair_queue.install(demo, limits, ctx.jobs)
    words_for_every_error(demo)
    ctx.queue_limits = limits
    ctx.jobs.count_waiting(lambda: _waiting_for_the_device(demo))
    ctx.jobs.count_shared(lambda not_sent: ctx.studio.shared_queue_place(not_sent=not_sent))
    return demo


def _waiting_for_the_device(demo: gr.Blocks) -> int:
    """Events waiting in Gradio's queue for the device (its concurrency id), for the queue's place."""
    waiting = getattr(demo._queue, "event_queue_per_concurrency_id", {}).get(GPU)
    return len(waiting.queue) if waiting is not None else 0


def warm_up(ctx: Context) -> threading.Thread:
    """Load the models in the background (holding the device), so the first Draft does not wait for it."""

    def load() -> None:
        try:
            ctx.studio.load_models(ctx.choice)
        except Exception as exc:  # the first job reports it properly
            print(f"atelier serve: loading the models failed: {exc}", flush=True)
        finally:
            security.no_downloads_from_here()  # the chosen models are in; web requests download nothing

    thread = threading.Thread(target=ctx.jobs.run_now, args=(load,), name="atelier-warm-up", daemon=True)
    thread.start()
    return thread


def theme() -> gr.themes.Base:
    # System fonts: the default theme fetches Google Fonts, a request to a third party on every page load.
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def launch(
    demo: gr.Blocks,
    ctx: Context,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    allowed_hosts: tuple[str, ...] = (),
    block: bool = True,
):
    """Serve `demo`; only the loopback names on `port`, `allowed_hosts` and a specific `host` are answered."""
    security.check_listen(host, auth)
    extra = (*allowed_hosts, *security.listen_names(host))
    uploads = security.UploadQuota(folder=Path(demo.GRADIO_CACHE))
    settings = security.GuardSettings(policy=security.HostPolicy(port=port, extra=extra), uploads=uploads)
    queue_message = Middleware(security.QueueFullMessage, max_size=ctx.queue_limits.gpu_waiting)
    files = ctx.studio.files_folder().resolve()
    downloads = ctx.studio.downloads_folder().resolve()  # links to gallery files, under readable names
    for folder in (files, downloads):
        folder.mkdir(parents=True, exist_ok=True)
    return demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        prevent_thread_lock=not block,
        allowed_paths=[str(files), str(downloads)],  # the gallery's own files; nothing else of the home folder
        max_file_size=security.MAX_UPLOAD,
        enable_monitoring=False,
        strict_cors=True,
        ssr_mode=False,
        mcp_server=False,
        run_history=False,
        footer_links=[],
        show_error=False,
        quiet=True,
        _app=security.guarded_app(settings, middleware=[queue_message]),  # the guard outside Gradio's CORS
        theme=theme(),
        css=CSS,
        js=KEYS_JS,
    )
