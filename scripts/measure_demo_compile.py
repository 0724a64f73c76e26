"""
The demo's training step with MODEL.RETINANET_FL.COMPILE True against eager: the synthetic config
(R-18-FPN, 16 images of 160 px, AdamW), the same weights, 12 interleaved steps of random images and
boxes, medians after the first two. Run alone, from the repository root:
    python scripts/measure_demo_compile.py
"""

import statistics
import sys
import time
from pathlib import Path

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from retinanet_fl.config import load_config
from retinanet_fl.model_zoo import get_config_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the tests' batch maker
import tests.modeling.test_meta_arch as test_meta_arch  # noqa: E402

test_meta_arch.NUM_CLASSES = 6  # the synthetic dataset's classes
CONFIG = get_config_file("synthetic/retinanet_R18_FPN_synthetic.yaml")


def main() -> None:
    torch.set_num_threads(2)
    models = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        cfg = load_config(CONFIG, ["MODEL.RETINANET_FL.COMPILE", str(compiled)])
        models[compiled] = build_model(cfg).train()
    models[True].load_state_dict(models[False].state_dict())
    optimizers = {c: torch.optim.AdamW(m.parameters(), lr=1e-3) for c, m in models.items()}
    times = {False: [], True: []}
    for step in range(12):
        sizes = [(160, 160, 1 + i % 3) for i in range(16)]
        batch = test_meta_arch.make_batch(step, sizes=sizes)
        for compiled in (False, True) if step % 2 else (True, False):
            start = time.perf_counter()
            with EventStorage():
                losses = models[compiled](batch)
            sum(losses.values()).backward()
            optimizers[compiled].step()
            optimizers[compiled].zero_grad()
            times[compiled].append(time.perf_counter() - start)
    print({c: [round(t, 3) for t in ts] for c, ts in times.items()})
    eager, compiled = (statistics.median(times[c][2:]) for c in (False, True))
    print(
        f"demo train step: eager {eager:.3f} s, compiled {compiled:.3f} s, "
        f"compiled / eager {compiled / eager:.3f}; first compiled step {times[True][0]:.1f} s"
    )


if __name__ == "__main__":
    main()
