"""zsad: zero-shot anomaly detection with CLIP, as Hugging Face models."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="zsad",
    version="0.1.0.dev0",
    description="Zero-shot anomaly detection with CLIP (AnomalyCLIP, AdaCLIP, HeadCLIP, Crane, DA-CLIP) "
    "as transformers models",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"zsad": ["hub/templates/*", "hub/released/registry.json", "metrics/evaluate_module/aupro/*"]},
    python_requires=">=3.10",
    install_requires=[
        # torch is not pulled in by transformers; on CPU-only machines install torch==2.13.0 first
        # (see .ci/run) so that this range is already satisfied and no CUDA wheel is fetched.
        "torch>=2.4",
        "transformers>=5.0,<6",
        "peft>=0.21,<0.22",
        "accelerate>=1.10",
        "datasets>=4.0",
        "evaluate>=0.4.6",
        "safetensors>=0.8",
        "huggingface_hub>=1.31,<3",
        "numpy",
        "scipy",
        "pillow",
        "tqdm",
        "filelock",
    ],
    extras_require={
        # dev includes the export extra so that the ONNX tests run in CI (.ci/run installs .[dev]).
        # dev also has the demo and the browser driver, so that CI runs the browser test (.ci/run installs chromium).
        "dev": ["pytest", "hypothesis", "onnx", "onnxscript", "onnxruntime", "openvino", "gradio>=5", "playwright"],
        "demo": ["gradio>=5"],
        "export": ["onnx", "onnxscript", "onnxruntime", "openvino"],
        "tracking": ["tensorboard"],
    },
    entry_points={"console_scripts": ["zsad=zsad.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
        "License :: OSI Approved :: Apache Software License",
    ],
)
