"""The package as users install it: a wheel, imported from another directory."""

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
