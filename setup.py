"""Install the ``ldm`` package: ``pip install -e .`` (core) or ``pip install -e .[dev]`` (tests).

torch is required but never replaced: if one is installed (CPU or CUDA build) any version >= 2.4 is kept.
torchvision and lpips are *not* needed: the perceptual loss is implemented in ``ldm.modules.lpips``.
"""

from setuptools import find_packages, setup

setup(
    name="collaborative-diffusion",
    version="0.1.0",
    description="Collaborative Diffusion for multi-modal face generation and editing (CVPR 2023), reproduced",
    python_requires=">=3.10",
    packages=find_packages(include=["ldm", "ldm.*"]),
    package_data={"ldm": ["assets/*.txt"]},
    install_requires=[
        "torch>=2.4",
        "pytorch-lightning>=2.4,<3",
        "omegaconf>=2.3",
        "transformers>=4.40",
        "tokenizers>=0.19",  # imported directly (ldm/modules/encoders.py)
        "einops>=0.7",
        "numpy>=1.24",
        "pillow>=10",
        "tqdm>=4.60",
        "safetensors>=0.4.1",
        "tensorboard>=2.12",
        "pyyaml>=6.0.1",  # imported directly (ldm/config.py)
    ],
    extras_require={
        # diffusers: the peer implementation the samplers are tested against (tests/test_samplers.py); no torchvision
        "dev": ["pytest>=8", "pytest-xdist>=3.0.2", "hypothesis>=6.100", "diffusers>=0.35"],
        # the web app (scripts/app.py, make app) and its tests; gradio pulls no torch or torchvision
        "app": ["gradio==6.31.0"],
        # make test-browser: drives the app in Debian's chromium + chromium-driver
        "browser": ["selenium==4.51.0"],
    },
)
