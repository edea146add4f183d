#!/usr/bin/env python
"""Train a CBAM-UNet on a folder of images and masks: see `python train.py --help`."""

import sys

from unet_cbam.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
