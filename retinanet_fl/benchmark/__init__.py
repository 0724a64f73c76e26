"""
Benchmarks (not tests): ``python -m retinanet_fl.benchmark {losses,train,inference,all} [options]``.

Each benchmark writes ``<name>.json`` (every measurement and the machine it ran on) and
``<name>.md`` (tables of the ratios) under ``--output-dir`` (``benchmarks/results`` by default).
Timings are medians over interleaved repeats, and ratios are taken between methods of the same
run, so a machine shared with other work skews them less than it skews absolute numbers.

* ``losses`` (:mod:`.losses`): the classification loss alone, ours against fvcore's and
  torchvision's.
* ``train`` and ``inference`` (:mod:`.models`): ``FocalLossRetinaNet`` against Detectron2's
  ``RetinaNet`` (same config, identical weights) and, for inference, torchvision's RetinaNet.
"""
from .cli import BENCHMARKS, build_parser, main

__all__ = ["BENCHMARKS", "build_parser", "main"]
