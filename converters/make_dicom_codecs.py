#!/usr/bin/env python3
"""Build fixtures/dicom_codecs/: small mammogram-like DICOM files in every transfer syntax
a screening archive exports, encoded by standard tools, with pydicom's decoded pixels.

    .venv-tf/bin/python converters/make_dicom_codecs.py

Needs (Debian): `apt-get install dcmtk libgdcm-tools`, and in .venv-tf: pydicom,
pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle (converters/setup.sh).

1. pydicom writes three native (Explicit VR Little Endian) bases from mini-MIAS mdb001
   (fixtures/images/mdb001.pgm, 4x4 block sums, cropped to 128 rows x 112 columns) with
   PatientID, StudyInstanceUID, SOPInstanceUID, ImageLaterality and ViewPosition set:
   `m2_12` (12 bits stored, MONOCHROME2), `m1_12` (12 bits, MONOCHROME1), `m2_16`
   (16 bits stored, MONOCHROME2).
2. The standard tools encode them: DCMTK dcmconv (implicit VR, deflated, big endian),
   dcmcjpeg (JPEG Lossless SV1 .70 and process 14 .57), dcmcjpls (JPEG-LS lossless .80,
   near-lossless .81), dcmcrle (RLE), GDCM gdcmconv (JPEG 2000 lossless .90, lossy .91).
3. pydicom (with the pylibjpeg plugins) decodes every file; `reference.npz` holds, per
   file, the values allconv's reader documents: `pixel_array`, MONOCHROME1 inverted over
   the stored-bits range, rescale slope/intercept applied (absent here, so integers).
   Identical arrays are stored once; `reference.json` maps each file to its array and
   holds pydicom's transfer syntax UID and attributes.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "dicom_codecs")
SRC = os.path.join(ROOT, "fixtures", "images", "mdb001.pgm")
ROWS, COLS = 128, 112

ATTRS = ("PatientID", "StudyInstanceUID", "SOPInstanceUID", "ImageLaterality", "ViewPosition")


def read_pgm(path):
    with open(path, "rb") as f:
        data = f.read()
    parts = data.split(maxsplit=4)
    assert parts[0] == b"P5", path
    w, h, maxval = int(parts[1]), int(parts[2]), int(parts[3])
    assert maxval == 255
    return np.frombuffer(parts[4][: w * h], dtype=np.uint8).reshape(h, w)


def source_pixels():
    """4x4 block sums of mdb001 (0..4080, 12 bits), cropped on the breast."""
    img = read_pgm(SRC).astype(np.uint32)
    h, w = img.shape
    s = img.reshape(h // 4, 4, w // 4, 4).sum(axis=(1, 3))  # 256 x 256
    return s[64 : 64 + ROWS, 144 : 144 + COLS]  # the breast side of mdb001 (right half)


def base(path, pixels, bits_stored, photometric, index):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    sop = f"1.2.826.0.1.3680043.10.1234.2.{index}"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.PatientID = f"MIAS-{index:03d}"
    ds.PatientName = "Mini^MIAS"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.1"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.1234.3.{index}"
    ds.Modality = "MG"
    ds.ImageLaterality = "R" if index != 2 else "L"
    ds.ViewPosition = "MLO" if index != 3 else "CC"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def run(*cmd):
    subprocess.run(cmd, check=True)


def reference(path):
    """pydicom's values with allconv's documented semantics (see module docstring)."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    signed = int(ds.PixelRepresentation) == 1
    if ds.PhotometricInterpretation == "MONOCHROME1":
        if signed:
            arr = -1 - arr.astype(np.int64)
        else:
            arr = (1 << int(ds.BitsStored)) - 1 - arr.astype(np.int64)
        arr = arr.astype(ds.pixel_array.dtype)
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    if signed or slope != 1.0 or intercept != 0.0:
        arr = (arr.astype(np.float64) * slope + intercept).astype(np.float32)
    # trimmed text, None when absent or empty (allconv's DicomAttributes)
    attrs = {a: (str(ds.get(a)).strip() or None) if ds.get(a) is not None else None for a in ATTRS}
    # native byte order (pydicom keeps big endian data big endian)
    arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("=")))
    return ds.file_meta.TransferSyntaxUID, arr, attrs


def main():
    for tool in ("dcmconv", "dcmcjpeg", "dcmcjpls", "dcmcrle", "gdcmconv"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install dcmtk libgdcm-tools")
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    px = source_pixels()
    tmp = tempfile.mkdtemp()
    bases = {
        "m2_12": os.path.join(tmp, "m2_12.dcm"),
        "m1_12": os.path.join(tmp, "m1_12.dcm"),
        "m2_16": os.path.join(tmp, "m2_16.dcm"),
    }
    base(bases["m2_12"], px, 12, "MONOCHROME2", 1)
    # MONOCHROME1: the stored values are the inverted image.
    base(bases["m1_12"], 4095 - px, 12, "MONOCHROME1", 2)
    # 16 bits stored: the 12-bit image times 16 plus a fixed pattern in the low bits.
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    base(bases["m2_16"], px * 16 + (yy * 7 + xx * 3) % 16, 16, "MONOCHROME2", 3)

    out = lambda name: os.path.join(OUT, name + ".dcm")  # noqa: E731
    made = []

    def make(name, *cmd):
        run(*cmd)
        made.append(name)

    # native: pydicom's explicit VR little endian as written, DCMTK for the others
    shutil.copy(bases["m2_12"], out("explicit_le_m2_12"))
    made.append("explicit_le_m2_12")
    make("implicit_le_m1_12", "dcmconv", "+ti", bases["m1_12"], out("implicit_le_m1_12"))
    make("deflated_m2_16", "dcmconv", "+td", bases["m2_16"], out("deflated_m2_16"))
    make("explicit_be_m2_16", "dcmconv", "+tb", bases["m2_16"], out("explicit_be_m2_16"))
    # JPEG Lossless: SV1 (.70) and process 14 with selection value 6 (.57)
    for b in ("m2_12", "m1_12", "m2_16"):
        make(f"jpeg_ll_sv1_{b}", "dcmcjpeg", "+e1", bases[b], out(f"jpeg_ll_sv1_{b}"))
    make("jpeg_ll_p14_m2_16", "dcmcjpeg", "+el", "+sv", "6", bases["m2_16"],
         out("jpeg_ll_p14_m2_16"))
    # JPEG-LS lossless (.80) and near-lossless (.81, NEAR 2)
    make("jpegls_ll_m2_16", "dcmcjpls", "+el", bases["m2_16"], out("jpegls_ll_m2_16"))
    make("jpegls_ll_m1_12", "dcmcjpls", "+el", bases["m1_12"], out("jpegls_ll_m1_12"))
    make("jpegls_near_m2_12", "dcmcjpls", "+en", "+md", "2", bases["m2_12"],
         out("jpegls_near_m2_12"))
    # RLE Lossless
    make("rle_m2_16", "dcmcrle", bases["m2_16"], out("rle_m2_16"))
    make("rle_m1_12", "dcmcrle", bases["m1_12"], out("rle_m1_12"))
    # JPEG 2000: lossless (.90) and lossy (.91, irreversible 9/7 at quality 50)
    make("j2k_ll_m2_16", "gdcmconv", "--j2k", bases["m2_16"], out("j2k_ll_m2_16"))
    make("j2k_ll_m2_12", "gdcmconv", "--j2k", bases["m2_12"], out("j2k_ll_m2_12"))
    make("j2k_lossy_m2_12", "gdcmconv", "--j2k", "--lossy", "--irreversible", "-q", "50",
         bases["m2_12"], out("j2k_lossy_m2_12"))
    shutil.rmtree(tmp)

    arrays, files = {}, {}
    for name in made:
        ts, arr, attrs = reference(out(name))
        key = "a" + hashlib.sha256(arr.tobytes() + str(arr.dtype).encode()).hexdigest()[:12]
        arrays[key] = arr
        files[name + ".dcm"] = {
            "transfer_syntax": str(ts),
            "array": key,
            "dtype": str(arr.dtype),
            "shape": list(arr.shape),
            "attributes": attrs,
        }
    np.savez_compressed(os.path.join(OUT, "reference.npz"), **arrays)
    meta = {
        "generator": "converters/make_dicom_codecs.py",
        "pydicom": pydicom.__version__,
        "numpy": np.__version__,
        "tools": {
            "dcmtk": subprocess.run(["dcmconv", "--version"], capture_output=True, text=True)
            .stdout.splitlines()[0],
            "gdcm": subprocess.run(["gdcmconv", "--version"], capture_output=True, text=True)
            .stdout.strip().splitlines()[0],
        },
        "files": files,
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    for name, info in files.items():
        print(f"{name:28s} {info['transfer_syntax']:24s} {info['array']}")


if __name__ == "__main__":
    main()
