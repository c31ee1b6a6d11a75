"""The interactive app's logic as plain functions (``scripts/app.py`` wires them into a Gradio page).

Nothing here imports Gradio, so all of it is unit-tested with the core install:

    mask_editor.py  the 19 classes as named brush colours, start masks (blank face, FaceWorld test masks,
                    mask PNGs), the editor's background + stroke layers -> an index mask
    influence.py    influence-map frames (a colour scale, labels) at every sampler step, and their animation
    generate.py     GenerateRequest -> every chosen method from the same seed, plus the influence frames
    edit.py         an Imagic edit in the run directory scripts/edit.py uses (resumable), with progress and
                    cancellation, on a private copy of the experts it fine-tunes
    sessions.py     per-session folders and cancel flags, upload limits, error messages for the page
"""
