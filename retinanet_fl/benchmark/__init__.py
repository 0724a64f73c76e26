"""
Benchmarks (not tests): ``python -m retinanet_fl.benchmark BENCHMARK [options]``, BENCHMARK one of
losses, train, inference, table1e, compile or all.

Each benchmark writes ``<name>.json`` (every measurement and the machine it ran on) and
``<name>.md`` (tables of the ratios) under ``--output-dir`` (``benchmarks/results`` by default);
``python -m retinanet_fl.benchmark render <name>.json`` prints the Markdown again from the JSON.
Timings are medians over interleaved repeats, and ratios are taken between methods of the same
run, so a machine shared with other work skews them less than it skews absolute numbers.

* ``losses`` (:mod:`.loss_kernels`, with its report): the classification loss alone, ours against
  fvcore's and torchvision's.
* ``train`` (:mod:`.train`) and ``inference`` (:mod:`.inference`): ``FocalLossRetinaNet`` against
  Detectron2's ``RetinaNet`` (same config, identical weights) and, for inference, torchvision's
  RetinaNet and our model exported to TorchScript and ONNX (:mod:`.exported`); the models and
  inputs are built by :mod:`.fixtures`.
* ``table1e`` (:mod:`.table1e`, with its report and plot): the paper's speed/accuracy table.
* ``compile`` (:mod:`.compiled`, its report in :mod:`.compiled_report`, its options in
  :mod:`.compiled_cli`): ``MODEL.RETINANET_FL.COMPILE`` against eager over COCO-like sizes, in
  inference and training.

The results are the dataclasses of :mod:`.results`, their pass/fail targets are in
:mod:`.targets`, the measurement helpers in :mod:`.common`, the train and inference Markdown in
:mod:`.report` and the command line in :mod:`.cli`.
"""

from .cli import BENCHMARKS, build_parser, main

__all__ = ["BENCHMARKS", "build_parser", "main"]
