"""The package as users install it: a wheel, imported from another directory."""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_configs_and_tools(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            str(REPO_ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheel_dir.glob("retinanet_fl-*.whl")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    check = (
        "import retinanet_fl, pathlib\n"
        "from retinanet_fl.config import load_config\n"
        "from retinanet_fl.model_zoo import get_config_file, list_config_files\n"
        f"assert pathlib.Path(retinanet_fl.__file__).is_relative_to({str(target)!r})\n"
        "print(len(list_config_files()))\n"
        "cfg = load_config(get_config_file('synthetic/retinanet_R18_FPN_synthetic.yaml'))\n"
        "print(cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.RESNETS.DEPTH)\n"
    )
    environment = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    output = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env=environment,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    assert int(output[0]) == len(list((REPO_ROOT / "configs").rglob("*.yaml")))
    assert output[1] == "FocalLossRetinaNet 18"
    for tool in (
        "retinanet_fl.train_net",
        "retinanet_fl.demo",
        "retinanet_fl.predict",
        "retinanet_fl.export",
    ):
        subprocess.run(
            [sys.executable, "-m", tool, "--help"],
            cwd=tmp_path,
            env=environment,
            check=True,
            capture_output=True,
        )


def test_import_registers_the_model_losses_and_datasets_and_nothing_else(datasets_root):
    # A fresh process: the test session has imported more of the package than `import` does.
    check = (
        "import os, retinanet_fl\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "from detectron2.modeling import META_ARCH_REGISTRY\n"
        "from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY\n"
        "from detectron2.utils.file_io import PathManager\n"
        "from retinanet_fl.modeling.cls_losses import CLS_LOSS_REGISTRY\n"
        "assert 'FocalLossRetinaNet' in META_ARCH_REGISTRY\n"
        "assert 'OctaveAnchorGenerator' in ANCHOR_GENERATOR_REGISTRY\n"
        "assert {name for name, _ in CLS_LOSS_REGISTRY} == "
        "{'focal', 'focal_star', 'ce', 'softmax_focal', 'ohem'}\n"
        "assert {'synthetic_train', 'synthetic_val'} <= set(DatasetCatalog.list())\n"
        "assert not [p for p in PathManager._path_handlers if p.startswith('synthetic-')]\n"
        # $DETECTRON2_DATASETS is read when a dataset is loaded, not at import.
        f"os.environ['DETECTRON2_DATASETS'] = {datasets_root!r}\n"
        "assert len(DatasetCatalog.get('synthetic_val')) == 4\n"
        "json_file = MetadataCatalog.get('synthetic_val').json_file\n"
        f"assert json_file.startswith({datasets_root!r}), json_file\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "DETECTRON2_DATASETS"}
    subprocess.run(
        [sys.executable, "-c", check], cwd=REPO_ROOT, env=environment, check=True, timeout=300
    )
