#!/usr/bin/env python
"""Predict masks for folders of images of any size: see `python predict.py --help`."""

import sys

from unet_cbam.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
