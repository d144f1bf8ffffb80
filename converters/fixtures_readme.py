"""Write fixtures/README.md (table of cases) from the fixtures' expect.json files."""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FX = os.path.join(ROOT, "fixtures")
COVERS = {
    "k208_resnet50_patch": "Keras 2.0.8 ResNet50 (conv1 7x7/2 same, avg_pool 7x7, GAP) + Dropout + Dense(3): patch classifier, 205x197",
    "k208_vgg16_patch": "VGG16 patch classifier (relu fused into conv), 80x64",
    "k208_vgg19_patch": "VGG19 patch classifier, 80x64",
    "k208_yaroslav_patch": "YaroslavNet (1 channel, auto-named BN), 128x96",
    "k208_resnet50_whole_resnet": "whole image: nested ResNet50 (node index 1) + resnet top [32-32-64]x2, 225x177",
    "k208_vgg16_whole_vgg": "whole image: nested VGG16 + vgg top 32x1; has training_config + optimizer_weights",
    "k208_vgg16_whole_resnet": "whole image: nested VGG16 + resnet top",
    "k208_yaroslav_whole_heatmap": "whole image: nested YaroslavNet + heatmap (avgpool, Dense on 4-D, maxpool) + FC16-8 + shortcut; optimizer_weights",
    "k208_conv": "Conv2D strides/dilation/valid/same on odd+even sizes, even kernels, use_bias=False, fused activations, Dense on 4-D, BN center/scale/epsilon/axis",
    "k208_pool_pad": "ZeroPadding2D/Cropping2D asymmetric, UpSampling2D, max/avg pooling valid+same, global pools, Permute, Reshape, Flatten",
    "k208_merge_act": "all 2.0.8 activations, LeakyReLU, PReLU (+shared_axes), ELU, Dropout, SpatialDropout2D, add/multiply/average/maximum/concatenate (axis -1 and 1)",
    "k208_seq_1d": "Sequential (config = bare list), Conv1D, Max/AveragePooling1D, GlobalMax/AveragePooling1D, RepeatVector, BN",
    "k208_nested_shared": "model nested two deep, nested model called twice (node indices 1, 2), shared Conv2D called twice",
    "k208_channels_first": "channels_first: Conv2D, BN axis=1, pooling, Flatten (C,H,W order) -> Dense",
    "k208_weights_only": "save_weights() file (no model_config) + model.json",
    "k122_th_conv": "Keras 1.2.2 Sequential, Convolution2D th ordering (OIHW kernels), BN mode 0, Flatten->Dense",
    "k122_tf_merge": "Keras 1.2.2 functional merge(mode='sum'/'concat'), tf ordering",
    "k122_merge_layer": "Keras 1.2.2 legacy Merge layer (concat) in a Sequential of two Sequentials (2 inputs)",
    "tfk_functional": "tf-keras Functional: DepthwiseConv2D, SeparableConv2D, ReLU(max_value), Softmax layer, LeakyReLU, BN axis list, Subtract, TF asymmetric same padding",
    "tfk_sequential": "tf-keras Sequential (dict config with InputLayer)",
    "tfk_resnet50_whole": "tf-keras nested Functional (node index 1), 2.0.8 ResNet50 topology + resnet top, even 288x224 input",
    "tfk_chunked": "tf-keras: layer_names split into layer_names0/layer_names1 (300 long-named layers)",
    "k208_layers_1d": "ZeroPadding1D/Cropping1D (int and asymmetric), UpSampling1D, SpatialDropout1D, GaussianNoise, GaussianDropout, AlphaDropout (identity at inference), ThresholdedReLU with theta exactly on an input value",
    "tfk_act_merge": "swish, exponential (Activation layer and fused), Minimum (2 and 3 inputs), ThresholdedReLU and ReLU(threshold, negative_slope, max_value) with the threshold exactly on an input value, GaussianNoise/GaussianDropout/AlphaDropout/SpatialDropout2D in tf-keras's dialect",
    "tfk_conv1d_cf": "Conv1D data_format=channels_first (valid, strided even-kernel same, dilated causal, no bias), BN axis=1, GlobalAveragePooling1D channels_first, Flatten (C,steps) -> Dense; computed through XLA (TF's CPU kernels refuse NCW), checked against a channels_last twin",
    "k3_legacy_h5": "Keras 3 legacy .h5 (weight names without :0, top_level_model_weights group)",
    "tfk_slash_names": "tf-keras: layer names with '/' (as tf.keras DenseNet writes them)",
    "k3_depthwise": "Keras 3 legacy .h5: DepthwiseConv2D weight named `kernel`",
}


def rehead_cover(e):
    """rehead_ref.py fixtures: what `allconv rehead` must reproduce."""
    r = e["rehead"]
    h, w = r["input_size"]
    s = "rehead: `%s` + `%s` at %dx%d, %d classes" % (r["patch"], r["top"], h, w, r["classes"])
    if r.get("structure_only"):
        s += "; structure only (layer table, count_params; no model.h5)"
    ms = r.get("min_input_size")
    if ms:
        s += "; smallest size %dx%d" % (ms["height"]["all_shapes_positive"],
                                        ms["width"]["all_shapes_positive"])
    if "crops" in e:
        s += "; crops.npz: patch classifier on crops vs the map, max logit diff %.2g" % (
            e["crops"]["max_abs_diff_logits"])
    return s


def size(d):
    """Bytes of the files under `d` (recursively), symlinks not counted."""
    tot = 0
    for f in os.listdir(d):
        p = os.path.join(d, f)
        if os.path.islink(p):
            continue
        tot += size(p) if os.path.isdir(p) else os.path.getsize(p)
    return tot


def main():
    rows = []
    total = 0
    for c in sorted(os.listdir(FX)):
        d = os.path.join(FX, c)
        if c == "hostile" or not os.path.isdir(d) or not os.path.exists(os.path.join(d, "expect.json")):
            continue
        e = json.load(open(os.path.join(d, "expect.json")))
        s = size(d)
        total += s
        cov = rehead_cover(e) if "rehead" in e else COVERS.get(c)
        cov = cov or ("TF-flavoured %s (kernels flipped, backend tensorflow, S<n> "
                      "lists, ':0' names); io.npz -> ../%s/io.npz" % (
                          e.get("derived_from"), e.get("derived_from")))
        chk = e.get("tfkeras_check")
        if chk and "ok" in chk:
            cov += "; tf-keras check: output diff %.1e" % chk["max_abs_diff_output"]
        elif chk and chk.get("layers_differing_over_1e-4"):
            cov += "; TF semantics differ at %d layers (io_tf.npz)" % len(chk["layers_differing_over_1e-4"])
        elif chk and chk.get("error"):
            cov += "; tf-keras cannot run it on CPU"
        gen = e.get("generator", "").split(" (")[0]
        if gen.startswith("converters/tfconvert.py"):
            gen = "tfconvert.py + tf-keras 2.21 check;"
        rows.append("| `%s` | %s %s | %s | %d KB |" % (c, gen, e.get("keras_version", ""), cov, s // 1024))
    hs = size(os.path.join(FX, "hostile")) if os.path.isdir(os.path.join(FX, "hostile")) else 0
    total += hs
    # Reference sets that are not model fixtures (no expect.json): (dir, made by, what).
    others = [
        ("train_step", "train_step_ref.py, dropout_probe.py", "genuine `train_on_batch` steps "
         "(tf-keras: 7 optimizers; Keras 2.0.8: sgd, adam, nadam) with L2, class/sample weights, "
         "a frozen BN, the two-stage freeze and the three-stage patch schedule with its "
         "dropout masks, both also resumed from a stage-1 checkpoint (tests/train_step.rs)"),
        ("augment", "augment_ref.py (Keras 2.0.8)", "ImageDataGenerator transforms, inputs, "
         "parameters and outputs (tests/augment_keras.rs)"),
        ("compressed", "compress_fixture.py (h5py)", "k208_conv with gzip-compressed datasets "
         "(tests/compressed.rs)"),
        ("eval", "eval_ref.py (scikit-learn, NumPy, SciPy)", "AUROC, ROC curves, a reference "
         "fast DeLong (Sun and Xu), multi-class metrics, percentiles and erfc on data with ties "
         "(tests/evaluate.rs)"),
        ("patch_nets", "patch_nets_ref.py (Keras 2.0.8)", "`model_config` and `count_params` of "
         "`get_dl_model`'s four patch classifiers at full width (resnet50 with and without "
         "Dropout, vgg16, vgg19, yaroslav); their weight files are written at test time "
         "(tests/patch_nets.rs)"),
    ]
    other_rows = []
    for d, gen, what in others:
        if os.path.isdir(os.path.join(FX, d)):
            s = size(os.path.join(FX, d))
            total += s
            other_rows.append("| `%s/` | %s | %s | %d KB |" % (d, gen, what, s // 1024))
    with open(os.path.join(FX, "README.md"), "w") as f:
        f.write("# fixtures/: genuine-Keras references\n\n"
                "Made by `converters/` (see converters/README.md). Each case has `model.h5` (or "
                "`weights.h5` + `model.json`), `io.npz` (`input`, `output`, `layer/<path>`), "
                "`expect.json` (facts from Keras: versions, backend, count_params, per-layer "
                "class/shape/params, notes, and for 2.0.8 cases `tfkeras_check`) and `COMMAND`. "
                "`rehead_structure_*` cases have only `expect.json` and `COMMAND`. "
                "`images/` is not made by converters/.\n\n"
                "| case | generator | covers | size |\n|---|---|---|---|\n")
        f.write("\n".join(rows) + "\n")
        f.write("| `hostile/` | h5py + Keras 2.0.8/1.2.2/tf-keras | files to refuse; "
                "`hostile/expect.json` maps file -> phrase the error must contain | %d KB |\n" % (hs // 1024))
        if other_rows:
            f.write("\n".join(other_rows) + "\n")
        f.write("\nTotal (converters' fixtures, symlinks not counted): %.1f MB\n" % (total / 1e6))
    print("total %.1f MB" % (total / 1e6))


if __name__ == "__main__":
    main()
