"""A Keras .h5 with every non-scalar dataset rewritten gzip-compressed (h5py, level 6,
shuffle), attributes and layout kept: allconv must read compressed weights exactly as the
uncompressed ones (tests/compressed.rs).

    .venv-tf/bin/python converters/compress_fixture.py fixtures/k208_conv/model.h5 \
        fixtures/compressed/k208_conv_gzip.h5
"""
import sys

import h5py


def copy(src, dst):
    for k, v in src.attrs.items():
        dst.attrs[k] = v
    for name, obj in src.items():
        if isinstance(obj, h5py.Group):
            copy(obj, dst.create_group(name))
            continue
        data = obj[()]
        if obj.shape:
            d = dst.create_dataset(name, data=data, compression="gzip", compression_opts=6,
                                   shuffle=True)
        else:
            d = dst.create_dataset(name, data=data)
        for k, v in obj.attrs.items():
            d.attrs[k] = v


if __name__ == "__main__":
    with h5py.File(sys.argv[1], "r") as a, h5py.File(sys.argv[2], "w") as b:
        copy(a, b)
