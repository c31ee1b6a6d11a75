"""Collaborative Diffusion for multi-modal face generation and editing (CVPR 2023), reproduced.

Sub-packages:
    ldm.diffusion  -- the diffusion maths (schedule, DDIM, collaborative combination); torch only
    ldm.modules    -- plain ``nn.Module`` networks, one per file
    ldm.models     -- thin Lightning modules that train the networks
    ldm.data       -- datasets (CelebA-HQ family and FaceWorld) and mask handling
"""

__version__ = "0.1.0"
