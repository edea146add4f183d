"""A mask from an exported model with onnxruntime, numpy and OpenCV only (no unet_cbam).

    python onnx_predict.py RUN/export/onnx IMAGE MASK.png

Follows RUN/export/onnx/preprocessing.json; for images up to the tile size
(512 pixels a side) the mask equals that of predict.py --precision float32 (exports
compute in float32). Larger images: cut tiles as preprocessing.json's "tiling" says and
blend their probabilities.
"""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime


def predict(folder: Path, image_path: Path) -> np.ndarray:
    spec = json.loads((folder / "preprocessing.json").read_text())
    raw = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
    if raw.ndim == 3:  # OpenCV decodes BGR(A); the model takes RGB, alpha dropped
        raw = cv2.cvtColor(raw[..., :3], cv2.COLOR_BGR2RGB)
    norm = spec["normalization"]
    if norm["mode"] == "bitdepth":
        x = raw.astype(np.float32) / {np.dtype("uint8"): 255.0,
                                      np.dtype("uint16"): 65535.0}.get(raw.dtype, 1.0)
    else:
        low, high = np.float32(norm["low"]), np.float32(norm["high"])
        x = (raw.astype(np.float32) - (low if raw.ndim == 3 else low[0])) / \
            ((high - low) if raw.ndim == 3 else (high - low)[0])
        x = np.clip(x, 0.0, 1.0)
    x = x[..., None] if x.ndim == 2 else x
    channels = spec["input"]["channels"]
    if x.shape[2] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=2)
    elif x.shape[2] == 3 and channels == 1:
        x = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    if norm["mode"] == "zscore":
        x = (x - np.float32(norm["mean"])) / np.float32(norm["std"])
    own_height, own_width = x.shape[:2]
    scale = spec.get("scale", {}).get("value", 1.0)  # the training resolution
    if scale != 1.0:
        size = (max(1, round(own_width * scale)), max(1, round(own_height * scale)))
        x = cv2.resize(x, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
    height, width = x.shape[:2]
    divisor = spec["input"]["divisor"]
    pad_h, pad_w = -height % divisor, -width % divisor  # reflect, as predict.py pads
    mode = "reflect" if pad_h < height and pad_w < width else "symmetric"
    x = np.pad(x, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    probabilities = session.run(None, {session.get_inputs()[0].name: x[None]})[0][0]
    probabilities = probabilities[:height, :width]
    if scale != 1.0:
        probabilities = cv2.resize(probabilities, (own_width, own_height),
                                   interpolation=cv2.INTER_LINEAR).reshape(
                                       own_height, own_width, -1)
    if spec["output"]["activation"] == "sigmoid":
        labels = probabilities[..., 0] > spec["labels"]["threshold"]
    else:
        labels = probabilities.argmax(axis=-1)
    encoding = spec["mask_encoding"]
    if encoding["encoding"] == "binary":  # written in the training masks' two values
        background, foreground = encoding["values"]
        return np.where(labels, foreground, background).astype(
            np.uint16 if foreground > 255 else np.uint8)
    return labels.astype(np.uint8)  # class ids (palette/rgb: map them as "mask_encoding" says)


if __name__ == "__main__":
    folder, image, output = (Path(a) for a in sys.argv[1:4])
    cv2.imwrite(str(output), predict(folder, image))
