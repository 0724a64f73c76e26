from setuptools import find_packages, setup

setup(
    name="retinanet_fl",
    version="0.1.0",
    description="RetinaNet and the Focal Loss (Lin et al.) as a Detectron2 extension",
    python_requires=">=3.9",
    packages=find_packages(include=["retinanet_fl", "retinanet_fl.*"]),
    # retinanet_fl/configs links to the repository's configs/; wheels get copies of the files.
    package_data={"retinanet_fl": ["configs/*.yaml", "configs/*/*.yaml", "configs/*/*/*.yaml"]},
    # torch, torchvision and detectron2 come first from `make install` (see README): torch's build
    # depends on the machine, and detectron2 is not on PyPI.
    install_requires=[
        # the only Detectron2 wheel on PyPI (sal-detectron2 0.7.2) declares numpy<2
        "numpy<2",
        # the same cv2 API as opencv-python, without the libGL that servers lack
        "opencv-python-headless",
        "pycocotools",
        "Pillow",
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "ruff==0.17.6"],
        # python -m retinanet_fl.export --format onnx (torch.export-based exporter: onnxscript),
        # --quantize int8 and running .onnx files (ONNX Runtime: predict, evaluate_exported, tests)
        "export": ["onnx>=1.16", "onnxscript>=0.4", "onnxruntime>=1.20"],
        # tools/ablation.py and tools/benchmark.py (plots; the benchmark's fvcore and torchvision
        # losses come with Detectron2 and torchvision)
        "tools": ["matplotlib", "PyYAML"],
        # the evaluation report's TIDE error breakdown: tidecv's own imports. tidecv itself is
        # installed with --no-deps (make install does it): it requires the GUI opencv-python,
        # which would clash with opencv-python-headless.
        "report": ["appdirs", "pandas", "seaborn"],
    },
)
