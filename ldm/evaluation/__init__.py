"""Evaluation: metrics on tensors (``metrics``), the FaceWorld evaluators (``evaluators``) and the paper's
real-data metrics with user-provided weights (``real_metrics``: FID, CLIP similarity, BiSeNet mask accuracy).
Torch only; no Lightning. ``scripts/evaluate.py`` drives them."""
