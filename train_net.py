#!/usr/bin/env python
"""Detectron2's ``train_net.py`` for this project; see :mod:`retinanet_fl.train_net`."""

from retinanet_fl.train_net import cli

if __name__ == "__main__":
    cli()
