"""A local web app: paint a mask, write a caption, watch the modalities collaborate; edit a face.

Generate: start from a blank face, a FaceWorld test mask, a mask PNG or a photo parsed into a mask; paint with
the 19 CelebAMask-HQ classes; compare collaborative, composable, text-only and mask-only samples from the
same seed; browse each modality's influence map at every step. Edit: upload a face, give a target caption
and/or paint a target mask, run the Imagic edit (collaborative or per modality) with progress and cancel, and
browse the alpha sweep; the run directory is scripts/edit.py's, so an interrupted edit resumes.

Needs the app extra: pip install -e .[app]  (or `make app`). Serves on 127.0.0.1 only, unless --host says
otherwise. Each browser session has its own folder under --out; one request's failure is a message in
the page, never the end of the app.

Examples:
  python scripts/app.py                                   # the shipped FaceWorld models, CPU, port 7860
  python scripts/app.py --port 8000 --out outputs/app
  # the released 256 model on a GPU, real photos parsed with BiSeNet
  python scripts/app.py --config configs/256_codiff_mask_text.yaml --ckpt checkpoints/256_codiff_mask_text.ckpt \\
      --device cuda --bisenet-weights weights/79999_iter.pth
"""

import logging
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry; the app works offline

from ldm.cli import existing_file, main_guard, make_parser, setup_logging, writable_dir
from ldm.errors import UserError

logger = logging.getLogger("app")
FACEWORLD = Path("checkpoints/faceworld")


def parse(argv):
    p = make_parser(__doc__)
    p.add_argument("--config", default=str(FACEWORLD / "codiff.yaml"), help="model config (collaborative or one expert)")
    p.add_argument("--ckpt", default=str(FACEWORLD / "codiff.safetensors"), help="its checkpoint (ours or released)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--out", default="outputs/app", help="where the sessions' folders go")
    p.add_argument("--parser", default=str(FACEWORLD / "parser.safetensors"), help="FaceWorld parser for photo -> mask")
    p.add_argument("--bisenet-weights", default=None, help="face-parsing.PyTorch's 79999_iter.pth: parse real photos with BiSeNet")
    p.add_argument("--max-upload-mb", type=int, default=10, help="largest upload accepted")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


def build_service(args):
    """Load the model and the parser (a bad checkpoint stops here with one line) and make the service."""
    import torch

    from ldm.app.edit import ModelSource
    from ldm.app.mask_editor import faceworld_source
    from ldm.app.service import AppService
    from ldm.app.sessions import SessionStore
    from ldm.face_parsing import load_face_parser
    from ldm.pipeline import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if not 1 <= args.max_upload_mb <= 1024:
        raise UserError(f"--max-upload-mb {args.max_upload_mb} is out of range; use 1 to 1024")
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is out of range; use 1 to 65535")
    existing_file(args.config, "config", "--config")
    ckpt = existing_file(args.ckpt, "checkpoint", "--ckpt")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device here; use --device cpu")
    model = load_model(args.config, ckpt, args.device, args.overrides)
    if getattr(model, "experts", None) is None:
        raise UserError(f"{args.config} does not build a diffusion model with experts; give a collaborative or LDM config")
    parser = None
    if args.bisenet_weights is not None or Path(args.parser).is_file():
        parser = load_face_parser(args.bisenet_weights, args.parser, args.device)
    else:
        logger.warning("no face parser at %s and no --bisenet-weights: photo -> mask is off", args.parser)
    from ldm.config import load_config, sample_settings

    return AppService(
        model=model, defaults=sample_settings(load_config(args.config, args.overrides)), source=ModelSource(args.config, args.ckpt, tuple(args.overrides), args.device),
        store=SessionStore(writable_dir(args.out)), parser=parser,
        faceworld=faceworld_source(Path(args.ckpt).parent / "recipe.json"), max_upload_bytes=args.max_upload_mb * 2**20,
    )


def served_paths(root: Path) -> list[str]:
    """Gradio hands out the files a request returns only from the working directory, the temporary folder and
    the paths allowed here: an --out outside the first two must be allowed."""
    import tempfile

    root = root.resolve()
    inside = [Path.cwd().resolve(), Path(tempfile.gettempdir()).resolve()]
    return [] if any(root.is_relative_to(base) for base in inside) else [str(root)]


# ------------------------------------------------------------------------------------------------
# The page


def session_id(request) -> str:
    """The Gradio session's id (one per page load, or per API client)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", getattr(request, "session_hash", None) or "anonymous")[:64]


def build_page(service):
    import gradio as gr

    from ldm.app import mask_editor
    from ldm.app.edit import APP_ALPHAS, APP_EMBED_STEPS, APP_FINETUNE_STEPS, MODE_TITLES, EditRequest
    from ldm.app.generate import METHOD_TITLES, GenerateRequest, sampler_choices
    from ldm.app.service import methods_from_page, parse_number
    from ldm.app.sessions import error_message
    from ldm.diffusion.collaborative import PRESETS
    from ldm.diffusion.samplers import get_sampler

    methods, edit_modes = service.methods(), service.edit_modes()
    defaults = service.defaults  # the config's sample section: the released DDIM 50 steps, eta 1 in the shipped ones

    def mask_editor_component(label, elem_id):
        return gr.ImageEditor(
            label=label, elem_id=elem_id, type="numpy", image_mode="RGBA", format="png", sources=(), transforms=(),
            canvas_size=(mask_editor.EDITOR_SIZE, mask_editor.EDITOR_SIZE), layers=False, height=420,
            brush=gr.Brush(colors=mask_editor.brush_colours(), default_color=mask_editor.hex_colour(13),
                           color_mode="fixed", default_size=8),
            eraser=gr.Eraser(default_size=10),
            value={"background": mask_editor.index_to_editor(mask_editor.blank_face()), "layers": [], "composite": None},
        )

    def editor_value(picture):
        return {"background": picture, "layers": [], "composite": picture}

    def start_handler(fn, with_caption):
        """A start-mask button: the editor's new picture (and caption), or the error in the status line."""

        def handler(*inputs):
            try:
                start = fn(*inputs)
            except Exception as err:  # noqa: BLE001 - every failure becomes a message in the page
                return (gr.update(), gr.update(), error_message(err)) if with_caption else (gr.update(), error_message(err))
            if with_caption:
                return editor_value(start.picture), start.caption if start.caption else gr.update(), start.message
            return editor_value(start.picture), start.message

        return handler

    with gr.Blocks(title="Collaborative Diffusion", analytics_enabled=False, delete_cache=(3600, 86400)) as page:
        gr.Markdown(
            "# Collaborative Diffusion\n" + service.describe() + "\n\n**Generate:** pick a start mask, paint on it "
            "(brush, then a class colour: the table names them), write a caption and compare the methods; the influence "
            "maps show which modality drives which region at each step. **Edit:** upload a face, give the target caption "
            "and/or paint the target mask, run the Imagic edit and browse the alpha sweep."
        )
        with gr.Tabs():
            # ---------------------------------------------------------------- Generate
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=3):
                        editor = mask_editor_component("Mask (paint with the class colours below)", "mask-editor")
                        gr.HTML(mask_editor.legend_html(), elem_id="mask-legend")
                        with gr.Row():
                            blank_btn = gr.Button("Blank face", size="sm")
                            fw_choices = [(label, str(i)) for label, i in mask_editor.faceworld_choices(service.faceworld)]
                            fw_choice = gr.Dropdown(choices=fw_choices, value=fw_choices[0][1], scale=3, allow_custom_value=True,
                                                    label="FaceWorld test mask (or type a test index)")
                            fw_btn = gr.Button("Use it", size="sm")
                        with gr.Row():
                            mask_file = gr.File(label="Mask PNG", file_types=[".png"], type="filepath", height=130)
                            photo = gr.Image(label="Photo -> mask", type="filepath", sources=["upload", "clipboard"], height=130)
                        photo_btn = gr.Button("Parse the photo into a mask", size="sm", interactive=service.parser is not None)
                    with gr.Column(scale=2):
                        caption = gr.Textbox(label="Caption", lines=2, elem_id="caption",
                                             placeholder="e.g. This man has beard of medium length. He is in his thirties.")
                        chosen = gr.CheckboxGroup(choices=[(METHOD_TITLES[m], m) for m in methods], value=methods,
                                                  label="Methods (same seed)", elem_id="methods")
                        with gr.Row():
                            sampler = gr.Dropdown(choices=sampler_choices(), value=defaults.sampler, label="Sampler")
                            preset = gr.Radio(choices=sorted(PRESETS), value=defaults.preset, label="Preset")
                        steps = gr.Slider(1, 200, value=defaults.steps, step=1, label="Steps", elem_id="steps")
                        with gr.Row():
                            eta = gr.Slider(0.0, 1.0, value=defaults.eta, step=0.05, label="eta (DDIM only)", scale=2,
                                            interactive=get_sampler(defaults.sampler).has_eta)
                            seed = gr.Number(value=0, precision=0, label="Seed", scale=1, elem_id="seed")
                        generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-button")
                        status = gr.Markdown("Start from a mask, write a caption, then Generate.", elem_id="status")
                with gr.Row():
                    results = gr.Gallery(label="Results from the same seed", columns=4, height=310, object_fit="contain",
                                         elem_id="results", scale=3, allow_preview=False)
                    conditions = gr.Image(label="Mask as read (32x32)", type="filepath",
                                          height=310, interactive=False, elem_id="conditions", scale=1)
                with gr.Row():
                    with gr.Column(scale=3):
                        frame = gr.Image(label="Influence of each modality at one step (collaborative)", type="filepath",
                                         height=280, interactive=False, elem_id="influence-frame")
                        step_slider = gr.Slider(0, 1, value=0, step=1, label="Step (slide to browse the steps)",
                                                elem_id="step-slider")
                    animation = gr.Image(label="All the steps, animated", type="filepath", height=280, interactive=False,
                                         elem_id="animation", scale=1)
                frames = gr.State([])

            # ---------------------------------------------------------------- Edit
            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    with gr.Column(scale=2):
                        face = gr.Image(label="Face to edit", type="filepath", sources=["upload", "clipboard"], height=260)
                        mode = gr.Radio(choices=[(MODE_TITLES[m], m) for m in edit_modes], value=edit_modes[0] if edit_modes else None,
                                        label="Edit")
                        edit_caption = gr.Textbox(label="Target caption", lines=2)
                        with gr.Accordion("Settings (released: 500 / 1000 steps, alphas -1 ... 2.5)", open=False):
                            with gr.Row():
                                embed_steps = gr.Number(value=APP_EMBED_STEPS, precision=0, label="Stage A steps (embedding)")
                                finetune_steps = gr.Number(value=APP_FINETUNE_STEPS, precision=0, label="Stage B steps (fine-tune)")
                            alphas = gr.Textbox(value=APP_ALPHAS, label="Alphas (comma list)")
                            with gr.Row():
                                edit_sampler = gr.Dropdown(choices=sampler_choices(), value=defaults.sampler, label="Sampler")
                                edit_steps = gr.Number(value=defaults.steps, precision=0, label="Steps")
                                edit_eta = gr.Number(value=defaults.eta, label="eta (DDIM)")
                                edit_seed = gr.Number(value=0, precision=0, label="Seed")
                                edit_preset = gr.Radio(choices=sorted(PRESETS), value=defaults.preset, label="Preset")
                        with gr.Row():
                            edit_btn = gr.Button("Run the edit", variant="primary")
                            cancel_btn = gr.Button("Cancel", variant="stop")
                        edit_status = gr.Markdown("Upload a face, give the target, then Run.")
                    with gr.Column(scale=3):
                        target_editor = mask_editor_component("Target mask", "target-editor")
                        with gr.Row():
                            from_face_btn = gr.Button("Mask from the face", size="sm", interactive=service.parser is not None)
                            target_blank_btn = gr.Button("Blank face", size="sm")
                            target_file = gr.File(label="Mask PNG", file_types=[".png"], type="filepath", height=130)
                with gr.Row():
                    sweep = gr.Gallery(label="Alpha sweep", columns=6, height=240, object_fit="contain")
                with gr.Row():
                    alpha_slider = gr.Slider(0, 1, value=0, step=1, label="Alpha image")
                    alpha_view = gr.Image(label="Selected alpha", type="filepath", height=256, interactive=False)
                    edit_grid = gr.Image(label="Grid: input, VAE reconstruction, targets, then the sweep", type="filepath",
                                         height=256, interactive=False)
                run_info = gr.Markdown()
                sweep_state = gr.State([])

        # ---------------------------------------------------------------- wiring: Generate
        blank_btn.click(start_handler(lambda: service.start_blank(), False), None, [editor, status], api_name="start_blank")
        fw_btn.click(start_handler(service.start_faceworld, True), fw_choice, [editor, caption, status], api_name="start_faceworld")
        mask_file.upload(start_handler(service.start_upload, False), mask_file, [editor, status], api_name="start_upload")
        photo_btn.click(start_handler(service.start_photo, False), photo, [editor, status], api_name="start_photo")
        sampler.change(lambda name: gr.update(interactive=get_sampler(name).has_eta), sampler, eta, api_name=False)

        def generate(editor_value, text, method_values, sampler_name, n_steps, eta_value, seed_value, preset_name,
                     request: gr.Request, progress=gr.Progress()):
            try:
                req = GenerateRequest(
                    caption=text or "", methods=methods_from_page(method_values), sampler=sampler_name,
                    steps=parse_number(n_steps, "steps"), eta=float(eta_value), seed=parse_number(seed_value, "seed"),
                    preset=preset_name,
                )
                result = service.generate(session_id(request), editor_value, req,
                                          lambda k, n, m: progress((k, n), desc=f"sampling: {METHOD_TITLES[m]}"))
            except Exception as err:  # noqa: BLE001 - every failure becomes a message in the page
                return (*[gr.update()] * 6, error_message(err))
            paths = [str(p) for p in result.frames]
            last = max(len(paths) - 1, 0)
            return (
                [(str(p), label) for p, label in result.images], str(result.conditions), paths,
                paths[-1] if paths else None, gr.update(maximum=max(last, 1), value=last, interactive=bool(paths)),
                str(result.animation) if result.animation else None,
                "Done: " + result.summary + ("" if paths else ". Influence maps come with the collaborative method."),
            )

        generate_btn.click(
            generate, [editor, caption, chosen, sampler, steps, eta, seed, preset],
            [results, conditions, frames, frame, step_slider, animation, status], api_name="generate",
            concurrency_limit=2,
        )
        step_slider.change(lambda k, paths: paths[int(k)] if paths and 0 <= int(k) < len(paths) else gr.update(),
                           [step_slider, frames], frame, api_name=False, show_progress="hidden")

        # ---------------------------------------------------------------- wiring: Edit
        def mask_from_face(path):
            try:
                index, _ = service.parse_photo(path)
            except Exception as err:  # noqa: BLE001
                return gr.update(), error_message(err)
            return editor_value(mask_editor.index_to_editor(index)), "Target mask parsed from the face: paint the change on it."

        from_face_btn.click(mask_from_face, face, [target_editor, edit_status], api_name="target_from_face")
        target_blank_btn.click(start_handler(lambda: service.start_blank(), False), None, [target_editor, edit_status],
                               api_name=False)
        target_file.upload(start_handler(service.start_upload, False), target_file, [target_editor, edit_status], api_name=False)

        def run_edit(path, editor_value, mode_name, text, n_embed, n_finetune, alpha_text, sampler_name, n_steps,
                     eta_value, seed_value, preset_name, request: gr.Request, progress=gr.Progress()):
            try:
                req = EditRequest(
                    mode=mode_name or "", caption=text or "", embed_steps=parse_number(n_embed, "stage A steps"),
                    finetune_steps=parse_number(n_finetune, "stage B steps"), alphas=alpha_text or "",
                    seed=parse_number(seed_value, "seed"), sampler=sampler_name, steps=parse_number(n_steps, "steps"),
                    eta=parse_number(eta_value, "eta", float), preset=preset_name,
                )
                outcome = service.edit(session_id(request), path, editor_value, req,
                                       lambda stage, done, total: progress((done, total), desc=stage))
            except Exception as err:  # noqa: BLE001
                return (*[gr.update()] * 6, error_message(err))
            gallery = [(str(p), label) for p, label in outcome.gallery]
            info = (f"Run directory `{outcome.out_dir}`. The same run from a shell (it resumes there):\n\n"
                    f"```\n{outcome.command}\n```")
            return (gallery, [str(p) for p, _ in gallery], str(outcome.grid), gr.update(maximum=max(len(gallery) - 1, 1), value=0),
                    gallery[0][0] if gallery else None, info, outcome.message)

        edit_event = edit_btn.click(
            run_edit,
            [face, target_editor, mode, edit_caption, embed_steps, finetune_steps, alphas, edit_sampler, edit_steps,
             edit_eta, edit_seed, edit_preset],
            [sweep, sweep_state, edit_grid, alpha_slider, alpha_view, run_info, edit_status], api_name="edit",
            concurrency_limit=2,
        )

        def cancel(request: gr.Request):
            return service.cancel(session_id(request))

        cancel_btn.click(cancel, None, edit_status, cancels=[edit_event], api_name="cancel")
        alpha_slider.change(lambda k, paths: paths[int(k)] if paths and 0 <= int(k) < len(paths) else gr.update(),
                            [alpha_slider, sweep_state], alpha_view, api_name=False, show_progress="hidden")

        def forget(request: gr.Request):
            service.forget(session_id(request))

        page.unload(forget)
    return page


@main_guard
def main(argv=None):
    args = parse(argv)
    setup_logging()
    try:
        import gradio as gr
    except ImportError:
        raise UserError("the app needs Gradio: pip install -e .[app] (or make app)") from None
    service = build_service(args)
    page = build_page(service)
    page.queue(default_concurrency_limit=2)
    logger.info("serving on http://%s:%d", args.host, args.port)
    from ldm.app.mask_editor import brush_names_script

    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    page.launch(server_name=args.host, server_port=args.port, max_file_size=f"{args.max_upload_mb}mb", share=False,
                show_error=False, theme=theme, head=brush_names_script(), allowed_paths=served_paths(service.store.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
