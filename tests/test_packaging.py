"""The package as users install it: a wheel, imported from another directory."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .test_train_net import TINY_OPTS

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_configs_and_commands_and_trains(tmp_path, datasets_root):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    # setuptools builds in the repository's build/: files deleted since a previous build linger.
    shutil.rmtree(REPO_ROOT / "build", ignore_errors=True)
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
        "retinanet_fl.check_data",
    ):
        subprocess.run(
            [sys.executable, "-m", tool, "--help"],
            cwd=tmp_path,
            env=environment,
            check=True,
            capture_output=True,
        )
    # The lab stays out of the wheel; the detector trains from it, from another directory.
    assert not (target / "tools").exists()
    train = [sys.executable, "-m", "retinanet_fl.train_net", "--config-file"]
    train += [str(target / "retinanet_fl/configs/synthetic/retinanet_R18_FPN_synthetic.yaml")]
    train += [*TINY_OPTS, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path / "out")]
    subprocess.run(
        train,
        cwd=tmp_path,
        env=dict(environment, DETECTRON2_DATASETS=datasets_root, OMP_NUM_THREADS="1"),
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "out" / "model_final.pth").exists()


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
        "{'focal', 'focal_star', 'ce', 'softmax_focal', 'ohem', 'quality_focal', 'varifocal'}\n"
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
