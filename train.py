#!/usr/bin/env python
"""Train a CBAM-UNet on a folder of images and masks: see `python train.py --help`."""

from unet_cbam.cli.train import entry

if __name__ == "__main__":
    entry()
