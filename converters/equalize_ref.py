"""Reference outputs for `--equalize-hist`, made by genuine numpy and OpenCV.

The paper's `read_img_for_pred` (dm_image.py) equalises after `read_resize_img`:
    img = read_resize_img(fname, target_size=..., target_scale=..., rescale_factor=...)
    img = cv2.equalizeHist(img.astype('uint8'))
This script runs exactly that on bundled images (8-bit and 16-bit, with and without
scaling, so 16-bit values above 255 go through numpy's float32 -> uint8 cast) and writes
fixtures/images/equalize.npz:
    eq/<case>      uint8 HxW: the equalised image
    params/<case>  float64 [target_h, target_w, target_scale (0: none), rescale]
    cast/in        float32: values around and beyond the uint8 range
    cast/out       uint8: numpy's `astype('uint8')` of them

Run: .venv-tf/bin/python converters/equalize_ref.py
"""
import os

import cv2
import numpy as np

# dm_image.read_resize_img, ported once (with IPP off) beside the sampler's port.
from sample_patches_ref import read_resize_img

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = os.path.join(HERE, "..", "fixtures", "images")

CASES = [
    # (name, file, (h, w), target_scale, rescale)
    ("mdb001_8bit", "mdb001.pgm", (200, 152), None, None),
    ("mdb028_8bit_scaled", "mdb028.pgm", (180, 140), 255.0, None),
    ("mdb001_16bit_rescaled", "mdb001_16.png", (200, 152), None, 0.003891),
    ("mdb001_16bit_wraps", "mdb001_16.png", (201, 153), None, None),
    ("mdb001_16bit_target_scale", "mdb001_16.png", (200, 152), 4095.0, 0.06),
]


def main():
    out = {}
    for name, file, size, ts, rescale in CASES:
        img = read_resize_img(
            os.path.join(IMAGES, file), target_size=size, target_scale=ts, rescale_factor=rescale
        )
        out[f"eq/{name}"] = cv2.equalizeHist(img.astype("uint8"))
        out[f"params/{name}"] = np.array(
            [size[0], size[1], ts or 0.0, rescale if rescale is not None else 1.0], dtype=np.float64
        )
        out[f"file/{name}"] = np.frombuffer(file.encode(), dtype=np.uint8)
    cast_in = np.array(
        [0.0, 0.49, 0.5, 1.99, 127.5, 254.99, 255.0, 255.5, 256.0, 300.7, 511.9, 4095.0,
         65535.0, 70000.25, 1e6 + 0.5],
        dtype=np.float32,
    )
    out["cast/in"] = cast_in
    out["cast/out"] = cast_in.astype("uint8")
    dst = os.path.join(IMAGES, "equalize.npz")
    np.savez_compressed(dst, **out)
    print(f"wrote {dst}: {len(CASES)} cases; numpy {np.__version__}, OpenCV {cv2.__version__}")


if __name__ == "__main__":
    main()
