"""``python -m unet_cbam train|predict|evaluate|fingerprint|export|suggest ...``: see
``unet_cbam.cli.main``."""

from unet_cbam.cli.main import entry

if __name__ == "__main__":
    entry()
