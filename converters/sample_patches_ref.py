#!/usr/bin/env python3
"""The paper's patch sampler, ported to Python 3, and the synthetic set it is run on.

`ddsm_train/sample_patches_combined.py` of lishen/end2end-all-conv, with the functions it
imports from `dm_image.py` (read_resize_img, crop_img, add_img_margins) and
`dm_preprocess.py` (segment_breast), ported with only the changes Python 3 and today's
libraries force:
  - print statements -> print(); `/` on integers -> `//` (patch_size/2 indexes arrays);
  - scipy.misc.toimage is gone: its arithmetic for mode='I' is written out in `toimage_I`
    (data = (data*1.0 - cmin)*(high - low)/(cmax - cmin) + low; astype uint32;
    Image.frombytes('I', ...)), exactly as scipy 0.19 did; Pillow 10+ no longer saves
    mode 'I' as PNG, so `save_I_png` writes out what older Pillow did (16-bit, clipped);
  - cv2.findContours returns (contours, hierarchy) since OpenCV 4, so `[-2]` takes the
    contours whatever the version (the script tested `ver[0] < 3` for the 2.x form);
  - pydicom instead of `dicom` (only used for .dcm files, none in the synthetic set).
Two additions that change no result: `cv2.ipp.setUseIPP(False)` (OpenCV's portable
resize; x86 wheels otherwise route INTER_CUBIC through Intel IPP, whose weights differ by
~4e-6) and a recorder that writes, per view, the blob keypoints, their permuted order and
every patch centre chosen, so the Rust test can compare step by step. Floats
that must match bit for bit are recorded as repr() strings (exact in any JSON reader).

Usage (repo root, .venv-tf with opencv, numpy, pandas, scikit-learn, pillow):
    .venv-tf/bin/python converters/sample_patches_ref.py            # fixture
    .venv-tf/bin/python converters/sample_patches_ref.py --bench DIR  # bigger set + timing
The fixture goes to fixtures/sample_patches/: input/ (the synthetic CBIS-DDSM-layout set),
expect/train, expect/val (the script's outputs) and record.json.
"""
import json
import os
import shutil
import sys
import time

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

cv2.ipp.setUseIPP(False)

RECORD = {"views": {}}


def _rec_view(out_dir, img_id):
    key = os.path.basename(os.path.normpath(out_dir)) + "/" + img_id
    return RECORD["views"].setdefault(key, {"abn": {}, "events": []})


# ---------------------------------------------------------------- dm_image.py ----
def crop_img(img, bbox):
    x, y, w, h = bbox
    return img[y:y + h, x:x + w]


def add_img_margins(img, margin_size):
    enlarged_img = np.zeros((img.shape[0] + margin_size * 2,
                             img.shape[1] + margin_size * 2))
    enlarged_img[margin_size:margin_size + img.shape[0],
                 margin_size:margin_size + img.shape[1]] = img
    return enlarged_img


def read_resize_img(fname, target_size=None, target_height=None,
                    target_scale=None, gs_255=False, rescale_factor=None):
    if target_size is None and target_height is None:
        raise Exception('One of [target_size, target_height] must not be None')
    if os.path.splitext(fname)[1] == '.dcm':
        import pydicom as dicom
        img = dicom.read_file(fname).pixel_array
    else:
        if gs_255:
            img = cv2.imread(fname, cv2.IMREAD_GRAYSCALE)
        else:
            img = cv2.imread(fname, cv2.IMREAD_UNCHANGED)
    if target_height is not None:
        target_width = int(float(target_height) / img.shape[0] * img.shape[1])
    else:
        target_height, target_width = target_size
    if (target_height, target_width) != img.shape:
        img = cv2.resize(
            img, dsize=(target_width, target_height),
            interpolation=cv2.INTER_CUBIC)
    img = img.astype('float32')
    if target_scale is not None:
        img_max = img.max() if img.max() != 0 else target_scale
        img *= target_scale / img_max
    if rescale_factor is not None:
        img *= rescale_factor
    return img


# ----------------------------------------------------------- dm_preprocess.py ----
def segment_breast(img, low_int_threshold=.05, crop=True):
    img_8u = (img.astype('float32') / img.max() * 255).astype('uint8')
    if low_int_threshold < 1.:
        low_th = int(img_8u.max() * low_int_threshold)
    else:
        low_th = int(low_int_threshold)
    _, img_bin = cv2.threshold(
        img_8u, low_th, maxval=255, type=cv2.THRESH_BINARY)
    contours = cv2.findContours(
        img_bin.copy(), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    cont_areas = [cv2.contourArea(cont) for cont in contours]
    idx = np.argmax(cont_areas)
    breast_mask = cv2.drawContours(
        np.zeros_like(img_bin), contours, idx, 255, -1)
    img_breast_only = cv2.bitwise_and(img, img, mask=breast_mask)
    x, y, w, h = cv2.boundingRect(contours[idx])
    if crop:
        img_breast_only = img_breast_only[y:y + h, x:x + w]
    return img_breast_only, (x, y, w, h)


# ------------------------------------------------------------- scipy.misc ----
def toimage_I(arr, high, low):
    """scipy.misc.toimage(arr, high=high, low=low, mode='I') (scipy <= 1.1), written out."""
    data = np.asarray(arr)
    shape = (data.shape[1], data.shape[0])
    cmin = np.amin(np.ravel(data))
    cmax = np.amax(np.ravel(data))
    with np.errstate(divide='ignore', invalid='ignore'):
        data = (data * 1.0 - cmin) * (high - low) / (cmax - cmin) + low
        data32 = data.astype(np.uint32)
    image = Image.frombytes('I', shape, data32.tobytes())
    return image


def save_I_png(image, fullname):
    """PIL.Image.save of a mode 'I' image as PNG, as Pillow < 10 did it: 16-bit grey,
    each int32 value clipped to 0..65535 (Pack.c packI16B). Pillow 10+ refuses mode 'I'
    for PNG, so the clipping is written out and the result saved as 'I;16'."""
    a = np.asarray(image, dtype=np.int32)
    a16 = np.clip(a, 0, 65535).astype(np.uint16)
    Image.fromarray(a16).save(fullname)


# ------------------------------------------------ sample_patches_combined.py ----
def const_filename(pat, side, view, directory, itype=None, abn=None):
    token_list = [pat, side, view]
    if itype is not None:
        token_list.insert(
            0, ('Calc' if itype == 'calc' else 'Mass') + '-Training')
        token_list.append(str(abn))
    fn = "_".join(token_list) + ".png"
    return os.path.join(directory, fn)


def crop_val(v, minv, maxv):
    v = v if v >= minv else minv
    v = v if v <= maxv else maxv
    return v


def overlap_patch_roi(patch_center, patch_size, roi_mask,
                      add_val=1000, cutoff=.5):
    x1, y1 = (patch_center[0] - patch_size // 2,
              patch_center[1] - patch_size // 2)
    x2, y2 = (patch_center[0] + patch_size // 2,
              patch_center[1] + patch_size // 2)
    x1 = crop_val(x1, 0, roi_mask.shape[1])
    y1 = crop_val(y1, 0, roi_mask.shape[0])
    x2 = crop_val(x2, 0, roi_mask.shape[1])
    y2 = crop_val(y2, 0, roi_mask.shape[0])
    roi_area = (roi_mask > 0).sum()
    roi_patch_added = roi_mask.copy()
    roi_patch_added[y1:y2, x1:x2] += add_val
    patch_area = (roi_patch_added >= add_val).sum()
    inter_area = (roi_patch_added > add_val).sum().astype('float32')
    return (inter_area / roi_area > cutoff or inter_area / patch_area > cutoff)


def create_blob_detector(roi_size=(128, 128), blob_min_area=3,
                         blob_min_int=.5, blob_max_int=.95, blob_th_step=10):
    params = cv2.SimpleBlobDetector_Params()
    params.filterByArea = True
    params.minArea = blob_min_area
    params.maxArea = roi_size[0] * roi_size[1]
    params.filterByCircularity = False
    params.filterByColor = False
    params.filterByConvexity = False
    params.filterByInertia = False
    params.minThreshold = int(blob_min_int * 255)
    params.maxThreshold = int(blob_max_int * 255)
    params.thresholdStep = blob_th_step
    ver = (cv2.__version__).split('.')
    if int(ver[0]) < 3:
        return cv2.SimpleBlobDetector(params)
    else:
        return cv2.SimpleBlobDetector_create(params)


def _roi_bbox(roi_mask, verbose):
    roi_mask_8u = roi_mask.astype('uint8')
    contours = cv2.findContours(
        roi_mask_8u.copy(), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    cont_areas = [cv2.contourArea(cont) for cont in contours]
    idx = np.argmax(cont_areas)
    rx, ry, rw, rh = cv2.boundingRect(contours[idx])
    cx = cy = None
    if verbose:
        M = cv2.moments(contours[idx])
        try:
            cx = int(M['m10'] / M['m00'])
            cy = int(M['m01'] / M['m00'])
            print("ROI centroid=", (cx, cy)); sys.stdout.flush()
        except ZeroDivisionError:
            cx = rx + int(rw / 2)
            cy = ry + int(rh / 2)
            print("ROI centroid=Unknown, use b-box center=", (cx, cy))
            sys.stdout.flush()
    return rx, ry, rw, rh, cx, cy


def _write_patch(img, x, y, patch_size, fullname):
    patch = img[y - patch_size // 2:y + patch_size // 2,
                x - patch_size // 2:x + patch_size // 2]
    patch = patch.astype('int32')
    patch_img = toimage_I(patch, high=patch.max(), low=patch.min())
    save_I_png(patch_img, fullname)


def sample_patches(img, roi_mask, out_dir, img_id, abn, pos, patch_size=256,
                   pos_cutoff=.75, neg_cutoff=.35,
                   nb_bkg=100, nb_abn=100, start_sample_nb=0, itype='calc',
                   bkg_dir='background',
                   calc_pos_dir='calc_mal', calc_neg_dir='calc_ben',
                   mass_pos_dir='mass_mal', mass_neg_dir='mass_ben',
                   verbose=False):
    if pos:
        roi_out = os.path.join(out_dir, calc_pos_dir if itype == 'calc' else mass_pos_dir)
    else:
        roi_out = os.path.join(out_dir, calc_neg_dir if itype == 'calc' else mass_neg_dir)
    bkg_out = os.path.join(out_dir, bkg_dir)
    basename = '_'.join([img_id, str(abn)])
    rec = _rec_view(out_dir, img_id)

    img = add_img_margins(img, patch_size // 2)
    roi_mask = add_img_margins(roi_mask, patch_size // 2)
    rx, ry, rw, rh, cx, cy = _roi_bbox(roi_mask, verbose)
    rec["abn"][str(abn)] = {"bbox": [rx, ry, rw, rh],
                            "roi_area": int((roi_mask > 0).sum())}

    rng = np.random.RandomState(12345)
    sampled_abn = 0
    nb_try = 0
    while sampled_abn < nb_abn:
        if nb_abn > 1:
            x = rng.randint(rx, rx + rw)
            y = rng.randint(ry, ry + rh)
            nb_try += 1
            if nb_try >= 1000:
                print("Nb of trials reached maximum, decrease overlap cutoff by 0.05")
                sys.stdout.flush()
                pos_cutoff -= .05
                nb_try = 0
                if pos_cutoff <= .0:
                    raise Exception("overlap cutoff becomes non-positive, "
                                    "check roi mask input.")
        else:
            x = cx
            y = cy
        if nb_abn == 1 or overlap_patch_roi((x, y), patch_size, roi_mask,
                                            cutoff=pos_cutoff):
            filename = basename + "_%04d" % (sampled_abn) + ".png"
            _write_patch(img, x, y, patch_size, os.path.join(roi_out, filename))
            rec["events"].append({"kind": "abn", "abn": str(abn), "x": int(x), "y": int(y),
                                  "file": os.path.basename(roi_out) + "/" + filename})
            sampled_abn += 1
            nb_try = 0
            if verbose:
                print("sampled an abn patch at (x,y) center=", (x, y))
                sys.stdout.flush()
    sampled_bkg = start_sample_nb
    while sampled_bkg < start_sample_nb + nb_bkg:
        x = rng.randint(patch_size // 2, img.shape[1] - patch_size // 2)
        y = rng.randint(patch_size // 2, img.shape[0] - patch_size // 2)
        if not overlap_patch_roi((x, y), patch_size, roi_mask, cutoff=neg_cutoff):
            filename = basename + "_%04d" % (sampled_bkg) + ".png"
            _write_patch(img, x, y, patch_size, os.path.join(bkg_out, filename))
            rec["events"].append({"kind": "bkg", "abn": str(abn), "x": int(x), "y": int(y),
                                  "file": os.path.basename(bkg_out) + "/" + filename})
            sampled_bkg += 1
            if verbose:
                print("sampled a bkg patch at (x,y) center=", (x, y))
                sys.stdout.flush()


def sample_blob_negatives(img, roi_mask, out_dir, img_id, abn, blob_detector,
                          patch_size=256, neg_cutoff=.35, nb_bkg=100,
                          start_sample_nb=0,
                          bkg_dir='background', verbose=False):
    bkg_out = os.path.join(out_dir, bkg_dir)
    basename = '_'.join([img_id, str(abn)])
    rec = _rec_view(out_dir, img_id)

    img = add_img_margins(img, patch_size // 2)
    roi_mask = add_img_margins(roi_mask, patch_size // 2)
    _roi_bbox(roi_mask, verbose)

    key_pts = blob_detector.detect((img / img.max() * 255).astype('uint8'))
    rec["keypoints"] = [[repr(float(k.pt[0])), repr(float(k.pt[1])), repr(float(k.size))]
                        for k in key_pts]
    rng = np.random.RandomState(12345)
    order = rng.permutation(len(key_pts)) if len(key_pts) > 0 else np.zeros(0, int)
    rng = np.random.RandomState(12345)
    key_pts = rng.permutation(key_pts)
    rec["permuted"] = [[repr(float(k.pt[0])), repr(float(k.pt[1]))] for k in key_pts]
    rec["permutation"] = [int(i) for i in order]
    sampled_bkg = 0
    for kp in key_pts:
        if sampled_bkg >= nb_bkg:
            break
        x, y = int(kp.pt[0]), int(kp.pt[1])
        if not overlap_patch_roi((x, y), patch_size, roi_mask, cutoff=neg_cutoff):
            filename = basename + "_%04d" % (start_sample_nb + sampled_bkg) + ".png"
            _write_patch(img, x, y, patch_size, os.path.join(bkg_out, filename))
            rec["events"].append({"kind": "hns", "abn": str(abn), "x": x, "y": y,
                                  "file": os.path.basename(bkg_out) + "/" + filename})
            if verbose:
                print("sampled a blob patch at (x,y) center=", (x, y))
                sys.stdout.flush()
            sampled_bkg += 1
    return sampled_bkg


def run(roi_mask_path_file, roi_mask_dir, pat_train_list_file, full_img_dir,
        train_out_dir, val_out_dir,
        target_height=4096, target_width=None, patch_size=256,
        segment_breast_=True,
        nb_bkg=30, nb_abn=30, nb_hns=15,
        pos_cutoff=.75, neg_cutoff=.35, val_size=.1,
        bkg_dir='background', calc_pos_dir='calc_mal', calc_neg_dir='calc_ben',
        mass_pos_dir='mass_mal', mass_neg_dir='mass_ben', verbose=True):
    print("Pathology file=", roi_mask_path_file)
    print("ROI mask dir=", roi_mask_dir)
    print("Patient train list=", pat_train_list_file)
    print("Full image dir=", full_img_dir)
    print("Train out dir=", train_out_dir)
    print("Val out dir=", val_out_dir)
    print("===")
    sys.stdout.flush()

    roi_mask_path_df = pd.read_csv(roi_mask_path_file, header=0)
    roi_mask_path_df = roi_mask_path_df.set_index(['patient_id', 'side', 'view'])
    roi_mask_path_df.sort_index(inplace=True)
    pat_train = pd.read_csv(pat_train_list_file, header=None)
    pat_train = pat_train.values.ravel()
    if len(pat_train) > 1:
        path_df = roi_mask_path_df.loc[pat_train.tolist()]
    else:
        locs = roi_mask_path_df.index.get_loc(pat_train[0])
        path_df = roi_mask_path_df.iloc[locs]
    pat_labs = []
    for pat in pat_train:
        pathology = path_df.loc[pat]['pathology']
        malignant = 0
        for path in pathology:
            if path.startswith('MALIGNANT'):
                malignant = 1
                break
        pat_labs.append(malignant)

    def write_pat_list(fn, pat_list):
        with open(fn, 'w') as f:
            for pat in pat_list:
                f.write(str(pat) + "\n")
            f.close()
    if val_size > 0:
        pat_train, pat_val, labs_train, labs_val = train_test_split(
            pat_train, pat_labs, stratify=pat_labs, test_size=val_size,
            random_state=12345)
        if len(pat_val) > 1:
            val_df = roi_mask_path_df.loc[pat_val.tolist()]
        else:
            locs = roi_mask_path_df.index.get_loc(pat_val[0])
            val_df = roi_mask_path_df.iloc[locs]
        write_pat_list(os.path.join(val_out_dir, 'pat_lst.txt'), pat_val.tolist())
        RECORD["val"] = pat_val.tolist()
    if len(pat_train) > 1:
        train_df = roi_mask_path_df.loc[pat_train.tolist()]
    else:
        locs = roi_mask_path_df.index.get_loc(pat_train[0])
        train_df = roi_mask_path_df.iloc[locs]
    write_pat_list(os.path.join(train_out_dir, 'pat_lst.txt'), pat_train.tolist())
    RECORD["train"] = pat_train.tolist()
    RECORD["labels"] = [int(v) for v in pat_labs]
    blob_detector = create_blob_detector(roi_size=(patch_size, patch_size))

    def do_sampling(pat_df, out_dir):
        for pat, side, view in pat_df.index.unique():
            full_fn = const_filename(pat, side, view, full_img_dir)
            try:
                if target_width is None:
                    full_img = read_resize_img(full_fn, target_height=target_height)
                else:
                    full_img = read_resize_img(
                        full_fn, target_size=(target_height, target_width))
                img_id = '_'.join([pat, side, view])
                print("ID:%s, read image of size=%s" % (img_id, full_img.shape), end=' ')
                rec = _rec_view(out_dir, img_id)
                rec["resized"] = list(full_img.shape)
                if segment_breast_:
                    full_img, bbox = segment_breast(full_img)
                    print("size after segmentation=%s" % (str(full_img.shape)))
                    rec["breast_bbox"] = [int(v) for v in bbox]
                sys.stdout.flush()
                abn_path = roi_mask_path_df.loc[pat].loc[side].loc[view]
                if isinstance(abn_path, pd.Series):
                    abn_num = [abn_path['abn_num']]
                    pathology = [abn_path['pathology']]
                    itypes = [abn_path['type']]
                else:
                    abn_num = abn_path['abn_num']
                    pathology = abn_path['pathology']
                    itypes = abn_path['type']
                bkg_sampled = False
                for abn, path, itype in zip(abn_num, pathology, itypes):
                    mask_fn = const_filename(pat, side, view, roi_mask_dir, itype, abn)
                    if target_width is None:
                        mask_img = read_resize_img(
                            mask_fn, target_height=target_height, gs_255=True)
                    else:
                        mask_img = read_resize_img(
                            mask_fn, target_size=(target_height, target_width),
                            gs_255=True)
                    if segment_breast_:
                        mask_img = crop_img(mask_img, bbox)
                    nb_hns_ = nb_hns if not bkg_sampled else 0
                    if nb_hns_ > 0:
                        hns_sampled = sample_blob_negatives(
                            full_img, mask_img, out_dir, img_id,
                            abn, blob_detector, patch_size, neg_cutoff,
                            nb_hns_, 0, bkg_dir, verbose)
                    else:
                        hns_sampled = 0
                    pos = path.startswith('MALIGNANT')
                    nb_bkg_ = nb_bkg - hns_sampled if not bkg_sampled else 0
                    sample_patches(full_img, mask_img, out_dir, img_id, abn, pos,
                                   patch_size, pos_cutoff, neg_cutoff,
                                   nb_bkg_, nb_abn, hns_sampled, itype,
                                   bkg_dir, calc_pos_dir, calc_neg_dir,
                                   mass_pos_dir, mass_neg_dir, verbose)
                    bkg_sampled = True
            except AttributeError:
                print("Read image error: %s" % (full_fn))
            except ValueError:
                print("Error sampling from ROI mask image: %s" % (mask_fn))

    print("Sampling for train set")
    sys.stdout.flush()
    do_sampling(train_df, train_out_dir)
    print("Done.")
    if val_size > 0.:
        print("Sampling for val set")
        sys.stdout.flush()
        do_sampling(val_df, val_out_dir)
        print("Done.")


def main_cli(argv):
    import argparse
    parser = argparse.ArgumentParser(description="Sample patches for DDSM images")
    parser.add_argument("roi_mask_path_file", type=str)
    parser.add_argument("roi_mask_dir", type=str)
    parser.add_argument("pat_train_list_file", type=str)
    parser.add_argument("full_img_dir", type=str)
    parser.add_argument("train_out_dir", type=str)
    parser.add_argument("val_out_dir", type=str)
    parser.add_argument("--target-height", dest="target_height", type=int, default=4096)
    parser.add_argument("--target-width", dest="target_width", type=int, default=None)
    parser.add_argument("--no-target-width", dest="target_width", action="store_const", const=None)
    parser.add_argument("--segment-breast", dest="segment_breast", action="store_true")
    parser.add_argument("--no-segment-breast", dest="segment_breast", action="store_false")
    parser.set_defaults(segment_breast=True)
    parser.add_argument("--patch-size", dest="patch_size", type=int, default=256)
    parser.add_argument("--nb-bkg", dest="nb_bkg", type=int, default=30)
    parser.add_argument("--nb-abn", dest="nb_abn", type=int, default=30)
    parser.add_argument("--nb-hns", dest="nb_hns", type=int, default=15)
    parser.add_argument("--pos-cutoff", dest="pos_cutoff", type=float, default=.75)
    parser.add_argument("--neg-cutoff", dest="neg_cutoff", type=float, default=.35)
    parser.add_argument("--val-size", dest="val_size", type=float, default=.1)
    parser.add_argument("--bkg-dir", dest="bkg_dir", type=str, default="background")
    parser.add_argument("--calc-pos-dir", dest="calc_pos_dir", type=str, default="calc_mal")
    parser.add_argument("--calc-neg-dir", dest="calc_neg_dir", type=str, default="calc_ben")
    parser.add_argument("--mass-pos-dir", dest="mass_pos_dir", type=str, default="mass_mal")
    parser.add_argument("--mass-neg-dir", dest="mass_neg_dir", type=str, default="mass_ben")
    parser.add_argument("--verbose", dest="verbose", action="store_true")
    parser.add_argument("--no-verbose", dest="verbose", action="store_false")
    parser.add_argument("--record", dest="record", type=str, default=None)
    parser.set_defaults(verbose=True)
    args = parser.parse_args(argv)
    run_opts = dict(
        target_height=args.target_height, target_width=args.target_width,
        segment_breast_=args.segment_breast, patch_size=args.patch_size,
        nb_bkg=args.nb_bkg, nb_abn=args.nb_abn, nb_hns=args.nb_hns,
        pos_cutoff=args.pos_cutoff, neg_cutoff=args.neg_cutoff, val_size=args.val_size,
        bkg_dir=args.bkg_dir, calc_pos_dir=args.calc_pos_dir,
        calc_neg_dir=args.calc_neg_dir, mass_pos_dir=args.mass_pos_dir,
        mass_neg_dir=args.mass_neg_dir, verbose=args.verbose)
    print("\n>>> Model training options: <<<\n", run_opts, "\n")
    run(args.roi_mask_path_file, args.roi_mask_dir, args.pat_train_list_file,
        args.full_img_dir, args.train_out_dir, args.val_out_dir, **run_opts)
    if args.record:
        with open(args.record, "w") as f:
            json.dump(RECORD, f, indent=1, sort_keys=True)


# ------------------------------------------------------------ synthetic set ----
def make_set(root, n_pat=8, seed=7, size=(330, 210), big=False):
    """A CBIS-DDSM-layout set: full images `P_xxxxx_SIDE_VIEW.png` (16-bit), masks
    `Calc|Mass-Training_P_xxxxx_SIDE_VIEW_N.png` (8-bit 0/255), roi_mask_path.csv and
    pat_train.txt. Breast: a half-ellipse of tissue touching the chest wall, textured,
    with bright specks (calcification-like blobs); lesions: ellipses of raised intensity."""
    r = np.random.RandomState(seed)
    full = os.path.join(root, "full")
    masks = os.path.join(root, "masks")
    os.makedirs(full, exist_ok=True)
    os.makedirs(masks, exist_ok=True)
    rows = []
    pats = []
    for p in range(n_pat):
        pat = "P_%05d" % (5 + 7 * p)
        pats.append(pat)
        malignant = p % 2 == 0
        views = [("LEFT", "CC")] if p % 3 else [("LEFT", "CC"), ("LEFT", "MLO")]
        if p == 1:
            views = [("RIGHT", "MLO")]
        for (side, view) in views:
            h, w = size
            if big:
                h, w = h * 4, w * 4
            h += r.randint(0, 20)
            w += r.randint(0, 20)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
            right = side == "RIGHT"
            xc = w - 1 if right else 0
            ell = ((xx - xc) / (0.82 * w)) ** 2 + ((yy - h / 2) / (0.45 * h)) ** 2
            breast = ell < 1
            tissue = 0.35 + 0.25 * np.exp(-ell * 1.5)
            k = cv2.GaussianBlur(r.rand(h, w), (0, 0), 4 if not big else 12)
            tissue += 0.5 * (k - 0.5)
            img = np.where(breast, tissue, 0.0)
            # bright specks: blob-detector candidates
            for _ in range(14 if not big else 60):
                cy, cx = r.randint(0, h), r.randint(0, w)
                if not breast[cy, cx]:
                    continue
                rad = r.uniform(1.2, 4.0)
                img += 0.45 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rad * rad)))
            # an artefact label outside the breast (segment_breast must drop it)
            lx = 2 if right else w - 16
            img[4:10, lx:lx + 12] = 0.7
            # lesions
            n_abn = 3 if (p == 0 and view == "CC") else (2 if p in (3, 4) else 1)
            itype_view = None
            for a in range(1, n_abn + 1):
                itype = "calc" if (p + a) % 2 == 0 else "mass"
                if itype_view is None:
                    itype_view = itype
                for _ in range(100):
                    cy, cx = r.randint(int(0.15 * h), int(0.85 * h)), r.randint(int(0.1 * w), int(0.9 * w))
                    if breast[cy, cx] and ell[cy, cx] < 0.6:
                        break
                ry_, rx_ = r.uniform(5, 16) * (4 if big else 1), r.uniform(5, 16) * (4 if big else 1)
                m = (((xx - cx) / rx_) ** 2 + ((yy - cy) / ry_) ** 2) < 1
                if p == 0 and a == 2:
                    # a second small region on the same mask: the largest contour wins
                    m |= (((xx - cx - 30) / 3.0) ** 2 + ((yy - cy) / 3.0) ** 2) < 1
                img += np.where(m, 0.15, 0.0)
                mask = np.where(m, 255, 0).astype(np.uint8)
                if p == 5:
                    # a 16-bit mask (0/65535), read as IMREAD_GRAYSCALE
                    mask = mask.astype(np.uint16) * 257
                prefix = "Calc-Training" if itype == "calc" else "Mass-Training"
                cv2.imwrite(os.path.join(masks, "%s_%s_%s_%s_%d.png" % (prefix, pat, side, view, a)), mask)
                if malignant:
                    path = "MALIGNANT" if a == 1 else ("BENIGN" if a == 2 else "BENIGN_WITHOUT_CALLBACK")
                else:
                    path = "BENIGN" if a % 2 else "BENIGN_WITHOUT_CALLBACK"
                rows.append((pat, side, view, a, path, itype))
            img = np.clip(img, 0, 1.4) / 1.4
            img16 = np.round(img * (4095 if p % 4 == 3 else 60000)).astype(np.uint16)
            img16 = np.where(breast | (img16 > 0), img16, 0).astype(np.uint16)
            if p == 6 and not big:
                # an 8-bit full image
                cv2.imwrite(os.path.join(full, "%s_%s_%s.png" % (pat, side, view)),
                            (img * 255).astype(np.uint8))
            else:
                cv2.imwrite(os.path.join(full, "%s_%s_%s.png" % (pat, side, view)), img16)
    # rows of one view not in abnormality order in the file: the table is sorted by
    # (patient, side, view) only
    rows = rows[::-1]
    df = pd.DataFrame(rows, columns=["patient_id", "side", "view", "abn_num", "pathology", "type"])
    df.to_csv(os.path.join(root, "roi_mask_path.csv"), index=False)
    with open(os.path.join(root, "pat_train.txt"), "w") as f:
        for pat in pats:
            f.write(pat + "\n")


def unit_cases():
    """Small cases of the pieces, each from the genuine library: numpy's legacy
    RandomState (randint, permutation), scikit-learn's stratified split, OpenCV's
    findContours / contourArea / boundingRect / moments and SimpleBlobDetector."""
    out = {"randint": [], "permutation": [], "split": [], "contours": [], "blobs": []}
    for lo, hi in [(0, 1), (5, 6), (0, 7), (3, 200), (16, 300), (0, 2 ** 31), (0, 2 ** 33 + 5)]:
        r = np.random.RandomState(12345)
        out["randint"].append({"seed": 12345, "low": lo, "high": hi,
                               "values": [int(r.randint(lo, hi)) for _ in range(20)]})
    for seed, n in [(12345, 0), (12345, 1), (12345, 12), (7, 40)]:
        out["permutation"].append({"seed": seed, "n": n,
                                   "values": [int(v) for v in np.random.RandomState(seed).permutation(n)]})
    for labels, ts, seed in [([1, 0, 1, 0, 1, 0, 1, 0], .25, 12345),
                             ([0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 1], .1, 12345),
                             ([1] * 7 + [0] * 23, .2, 99),
                             ([0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0], .3, 12345)]:
        ids = ["p%02d" % i for i in range(len(labels))]
        tr, te = train_test_split(ids, stratify=labels, test_size=ts, random_state=seed)
        out["split"].append({"labels": labels, "test_size": ts, "seed": seed,
                             "train": list(tr), "test": list(te)})
    r = np.random.RandomState(3)
    for i in range(6):
        h, w = 18 + 3 * i, 22 + 2 * i
        g = cv2.GaussianBlur(r.rand(h, w), (0, 0), 1.0 + 0.3 * i)
        b = (g > np.median(g) + (0.02 if i % 2 else -0.01)).astype(np.uint8)
        if i == 0:
            b[:] = 0
            b[5:9, 4:9] = 1; b[6:8, 6] = 0; b[12, 3] = 1; b[14:16, 10:13] = 1
        cl = []
        for mode, approx in [("list_none", (cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)),
                             ("tree_simple", (cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE))]:
            cs, hier = cv2.findContours(b.copy(), *approx)
            cl.append((mode, [{"points": c.reshape(-1, 2).tolist(),
                               "area": repr(float(cv2.contourArea(c))),
                               "bbox": list(cv2.boundingRect(c)),
                               "m": [repr(cv2.moments(c)[k]) for k in ("m00", "m10", "m01")]}
                              for c in cs],
                       [] if hier is None else hier.reshape(-1, 4).tolist()))
        out["contours"].append({"h": h, "w": w, "pixels": b.ravel().tolist(),
                                **{m: {"contours": c, "hierarchy": hh} for m, c, hh in cl}})
    det = create_blob_detector(roi_size=(32, 32))
    for i in range(3):
        h, w = 60 + 10 * i, 70
        g = cv2.GaussianBlur(r.rand(h, w), (0, 0), 2.0 + i)
        g = (g - g.min()) / (g.max() - g.min())
        img = (g * 255).astype(np.uint8)
        kps = det.detect(img)
        out["blobs"].append({"h": h, "w": w, "pixels": img.ravel().tolist(),
                             "keypoints": [[repr(float(k.pt[0])), repr(float(k.pt[1])), repr(float(k.size))]
                                           for k in kps]})
    return out


FIXTURE_OPTS = ["--target-height", "256", "--patch-size", "32", "--nb-bkg", "6",
                "--nb-abn", "4", "--nb-hns", "3", "--val-size", "0.25", "--no-verbose"]
# Other paths of the script: no segmentation, a fixed target size, an odd patch size
# (patch_size // 2 margins, 2 * (patch_size // 2) sides), a positive cutoff high enough
# that the 1000-try decay runs; and one abnormal patch per ROI at its centroid
# (nb_abn == 1; the script computes that centroid only when verbose, its default), no
# hard negatives, no validation set.
ALT_RUNS = {
    "alt1": ["--target-height", "200", "--target-width", "150", "--no-segment-breast",
             "--patch-size", "25", "--nb-bkg", "3", "--nb-abn", "2", "--nb-hns", "2",
             "--pos-cutoff", "0.97", "--neg-cutoff", "0.2", "--val-size", "0.25",
             "--no-verbose"],
    "alt2": ["--target-height", "300", "--patch-size", "32", "--nb-bkg", "2",
             "--nb-abn", "1", "--nb-hns", "0", "--val-size", "0"],
}


def run_fixture(fx, inp, name, opts, val):
    global RECORD
    RECORD = {"views": {}}
    sets = ("train", "val") if val else ("train",)
    for d in sets:
        for sub in ("background", "calc_mal", "calc_ben", "mass_mal", "mass_ben"):
            os.makedirs(os.path.join(fx, name, d, sub))
    args = [os.path.join(inp, "roi_mask_path.csv"), os.path.join(inp, "masks"),
            os.path.join(inp, "pat_train.txt"), os.path.join(inp, "full"),
            os.path.join(fx, name, "train"), os.path.join(fx, name, "val")]
    rec_path = os.path.join(fx, name, "record.json")
    main_cli(args + opts + ["--record", rec_path])
    with open(rec_path) as f:
        rec = json.load(f)
    rec["options"] = opts
    rec["versions"] = {"opencv": cv2.__version__, "numpy": np.__version__,
                       "pandas": pd.__version__, "PIL": Image.__version__,
                       "sklearn": __import__("sklearn").__version__}
    return rec, rec_path


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if len(sys.argv) > 1 and sys.argv[1] == "--cli":
        main_cli(sys.argv[2:])
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--make-set":
        make_set(sys.argv[2], n_pat=int(sys.argv[3]) if len(sys.argv) > 3 else 8,
                 big=len(sys.argv) > 4 and sys.argv[4] == "big")
        return
    fx = os.path.join(root, "fixtures", "sample_patches")
    if os.path.exists(fx):
        shutil.rmtree(fx)
    inp = os.path.join(fx, "input")
    make_set(inp)
    t0 = time.time()
    # The main run: fixtures/sample_patches/expect/{train,val} and record.json (with the
    # unit cases).
    rec, rec_path = run_fixture(fx, inp, "expect", FIXTURE_OPTS, True)
    rec["units"] = unit_cases()
    os.replace(rec_path, os.path.join(fx, "record.json"))
    with open(os.path.join(fx, "record.json"), "w") as f:
        json.dump(rec, f, sort_keys=True)
    for name, opts in ALT_RUNS.items():
        val = float(opts[opts.index("--val-size") + 1]) > 0
        rec, rec_path = run_fixture(fx, inp, name, opts, val)
        with open(rec_path, "w") as f:
            json.dump(rec, f, sort_keys=True)
    print("fixture written in %.1f s" % (time.time() - t0))


if __name__ == "__main__":
    main()
