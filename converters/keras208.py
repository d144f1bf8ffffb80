"""Fixtures written by genuine Keras 2.0.8 (Theano backend, see converters/README.md).

Usage (from the repo root):
    .venv-keras208/bin/python converters/keras208.py CASE [--full-width]
    .venv-keras208/bin/python converters/keras208.py --list

One case per process: Keras auto-names layers (activation_1, dense_2, ...) from
per-process counters, so a fresh process gives the names a fresh session gives.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
FLAGS = [a for a in sys.argv[1:] if a.startswith("--")]
CASE = ARGS[0] if ARGS else None
FULL = "--full-width" in FLAGS

common.setup_env("theano", "channels_first" if CASE == "k208_channels_first" else "channels_last")

import numpy as np  # noqa: E402
import keras  # noqa: E402
import theano  # noqa: E402,F401
import theano.ifelse  # noqa: E402,F401
from keras import backend as K  # noqa: E402
from keras import layers as KL  # noqa: E402
from keras.layers import (Input, Conv2D, BatchNormalization, Activation, MaxPooling2D,  # noqa: E402
                          AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D,
                          Dense, Dropout, Flatten)
from keras.models import Model, Sequential  # noqa: E402
from keras.regularizers import l2  # noqa: E402

GENERATOR = ".venv-keras208 (keras 2.0.8, theano 1.0.5, backend theano)"
CHANNEL_AXIS = 3 if K.image_data_format() == "channels_last" else 1


# ----------------------------------------------------------------------------
# keras 2.0.8 applications topology (resnet50.py / vgg16.py / vgg19.py), with a
# width divisor.  Layer names, layer order and hyper-parameters are unchanged.
def _w(n, div):
    return max(1, n // div)


def identity_block(input_tensor, kernel_size, filters, stage, block, div):
    filters1, filters2, filters3 = [_w(f, div) for f in filters]
    bn_axis = CHANNEL_AXIS
    conv_name_base = 'res' + str(stage) + block + '_branch'
    bn_name_base = 'bn' + str(stage) + block + '_branch'
    x = Conv2D(filters1, (1, 1), name=conv_name_base + '2a')(input_tensor)
    x = BatchNormalization(axis=bn_axis, name=bn_name_base + '2a')(x)
    x = Activation('relu')(x)
    x = Conv2D(filters2, kernel_size, padding='same', name=conv_name_base + '2b')(x)
    x = BatchNormalization(axis=bn_axis, name=bn_name_base + '2b')(x)
    x = Activation('relu')(x)
    x = Conv2D(filters3, (1, 1), name=conv_name_base + '2c')(x)
    x = BatchNormalization(axis=bn_axis, name=bn_name_base + '2c')(x)
    x = KL.add([x, input_tensor])
    x = Activation('relu')(x)
    return x


def conv_block(input_tensor, kernel_size, filters, stage, block, div, strides=(2, 2)):
    filters1, filters2, filters3 = [_w(f, div) for f in filters]
    bn_axis = CHANNEL_AXIS
    conv_name_base = 'res' + str(stage) + block + '_branch'
    bn_name_base = 'bn' + str(stage) + block + '_branch'
    x = Conv2D(filters1, (1, 1), strides=strides, name=conv_name_base + '2a')(input_tensor)
    x = BatchNormalization(axis=bn_axis, name=bn_name_base + '2a')(x)
    x = Activation('relu')(x)
    x = Conv2D(filters2, kernel_size, padding='same', name=conv_name_base + '2b')(x)
    x = BatchNormalization(axis=bn_axis, name=bn_name_base + '2b')(x)
    x = Activation('relu')(x)
    x = Conv2D(filters3, (1, 1), name=conv_name_base + '2c')(x)
    x = BatchNormalization(axis=bn_axis, name=bn_name_base + '2c')(x)
    shortcut = Conv2D(filters3, (1, 1), strides=strides, name=conv_name_base + '1')(input_tensor)
    shortcut = BatchNormalization(axis=bn_axis, name=bn_name_base + '1')(shortcut)
    x = KL.add([x, shortcut])
    x = Activation('relu')(x)
    return x


def ResNet50(div, input_shape=(None, None, 3), pooling='avg'):
    img_input = Input(shape=input_shape)
    bn_axis = CHANNEL_AXIS
    x = Conv2D(_w(64, div), (7, 7), strides=(2, 2), padding='same', name='conv1')(img_input)
    x = BatchNormalization(axis=bn_axis, name='bn_conv1')(x)
    x = Activation('relu')(x)
    x = MaxPooling2D((3, 3), strides=(2, 2))(x)
    x = conv_block(x, 3, [64, 64, 256], stage=2, block='a', div=div, strides=(1, 1))
    x = identity_block(x, 3, [64, 64, 256], stage=2, block='b', div=div)
    x = identity_block(x, 3, [64, 64, 256], stage=2, block='c', div=div)
    x = conv_block(x, 3, [128, 128, 512], stage=3, block='a', div=div)
    for b in 'bcd':
        x = identity_block(x, 3, [128, 128, 512], stage=3, block=b, div=div)
    x = conv_block(x, 3, [256, 256, 1024], stage=4, block='a', div=div)
    for b in 'bcdef':
        x = identity_block(x, 3, [256, 256, 1024], stage=4, block=b, div=div)
    x = conv_block(x, 3, [512, 512, 2048], stage=5, block='a', div=div)
    x = identity_block(x, 3, [512, 512, 2048], stage=5, block='b', div=div)
    x = identity_block(x, 3, [512, 512, 2048], stage=5, block='c', div=div)
    x = AveragePooling2D((7, 7), name='avg_pool')(x)
    if pooling == 'avg':
        x = GlobalAveragePooling2D()(x)
    elif pooling == 'max':
        x = GlobalMaxPooling2D()(x)
    return Model(img_input, x, name='resnet50')


def VGG(div, convs, name, input_shape=(None, None, 3), pooling='avg'):
    img_input = Input(shape=input_shape)
    x = img_input
    for b, (n, f) in enumerate(zip(convs, [64, 128, 256, 512, 512]), start=1):
        for c in range(1, n + 1):
            x = Conv2D(_w(f, div), (3, 3), activation='relu', padding='same',
                       name='block%d_conv%d' % (b, c))(x)
        x = MaxPooling2D((2, 2), strides=(2, 2), name='block%d_pool' % b)(x)
    if pooling == 'avg':
        x = GlobalAveragePooling2D()(x)
    elif pooling == 'max':
        x = GlobalMaxPooling2D()(x)
    return Model(img_input, x, name=name)


def Yaroslav(div, classes=3, input_shape=(None, None, 1)):
    """end2end-all-conv dm_keras_ext.Yaroslav, widths divided by `div`."""
    img_input = Input(shape=input_shape)
    x = img_input
    for b, f in enumerate([32, 64, 128, 256, 256, 512], start=1):
        for c in (1, 2):
            x = Conv2D(_w(f, div), (3, 3), padding='same', name='block%d_conv%d' % (b, c))(x)
            x = BatchNormalization(axis=CHANNEL_AXIS)(x)
            x = Activation('relu')(x)
        x = MaxPooling2D((2, 2), strides=(2, 2), name='block%d_pool' % b)(x)
    x = GlobalAveragePooling2D()(x)
    x = Dense(classes, activation='softmax', name='predictions')(x)
    return Model(img_input, x, name='yaroslav')


def patch_model(net, div, nb_class=3, hidden_dropout=0.5, weight_decay=0.01):
    """dm_keras_ext.get_dl_model: base(include_top=False, pooling='avg') + Dropout + Dense."""
    if net == 'yaroslav':
        return Yaroslav(div, classes=nb_class)
    if net == 'resnet50':
        base = ResNet50(div)
    elif net == 'vgg16':
        base = VGG(div, [2, 2, 3, 3, 3], 'vgg16')
    elif net == 'vgg19':
        base = VGG(div, [2, 2, 4, 4, 4], 'vgg19')
    x = base.output
    if hidden_dropout > 0.:
        x = Dropout(hidden_dropout)(x)
    preds = Dense(nb_class, activation='softmax', kernel_regularizer=l2(weight_decay))(x)
    return Model(inputs=base.input, outputs=preds)


# ----------------------------------------------------------------------------
# end2end-all-conv dm_resnet.add_top_layers (faithful copy) and its helpers live in
# converters/dm_top.py, bound here to this namespace's layer classes: Keras 2.0.8 when run
# as a script, tf-keras when tfkeras.py executes this section with its own names.
import dm_top  # noqa: E402
dm_top.bind(globals())
from dm_top import (_conv_bn_relu, _shortcut, _residual_block, bottleneck_org,  # noqa: E402,F401
                    _vgg_block, add_top_layers)


# ----------------------------------------------------------------------------
def predict_fn(model):
    return lambda x: model.predict(x, batch_size=len(x[0]) if isinstance(x, list) else len(x))


def record(case, model, x, notes, keep=(), extra_meta=None, save=True, budget=common.NPZ_BUDGET):
    d = common.case_dir(case)
    y = model.predict(x, batch_size=len(x[0]) if isinstance(x, list) else len(x))
    acts = common.collect_activations(keras, model, x)
    if os.environ.get("ALLCONV_VERBOSE"):
        print(common.act_stats(acts))
    if save:
        model.save(os.path.join(d, "model.h5"))
    meta = {
        "keras_version": keras.__version__, "backend": K.backend(), "generator": GENERATOR,
        "image_data_format": K.image_data_format(),
        "count_params": int(model.count_params()),
        "input_shape": list(np.asarray(x[0] if isinstance(x, list) else x).shape),
        "layers": common.layer_table(model, acts),
        "notes": list(notes),
    }
    if isinstance(x, list):
        meta["input_shapes"] = [list(a.shape) for a in x]
    if extra_meta:
        meta.update(extra_meta)
    common.save_case(case, x, y, acts, meta, keep=keep, budget=budget)
    common.write_command(case, ".venv-keras208/bin/python converters/keras208.py " + case)
    common.summarize(case)
    return y, acts


ORIENT_NOTE = ("Written by Keras 2.0.8 on Theano: backend attribute 'theano', conv kernels are "
               "stored in Theano orientation (Theano does true convolution: a TensorFlow reader "
               "must flip the spatial axes, keras.utils.conv_utils.convert_kernel). Weight names "
               "are Theano shared-variable names '<layer>/<var>' without ':0'.")

ARCH = {
    # case: (net, div, input HxW)
    "k208_resnet50_patch": ("resnet50", 16, (205, 197)),
    "k208_vgg16_patch": ("vgg16", 16, (80, 64)),
    "k208_vgg19_patch": ("vgg19", 16, (80, 64)),
    "k208_yaroslav_patch": ("yaroslav", 8, (128, 96)),
}
WHOLE = {
    # case: (net, div, image HxW, add_top_layers kwargs)
    "k208_resnet50_whole_resnet": ("resnet50", 16, (225, 177), dict(
        block_type='resnet', depths=[32, 32], repetitions=[1, 1], bottleneck_enlarge_factor=2)),
    "k208_vgg16_whole_vgg": ("vgg16", 16, (225, 177), dict(
        block_type='vgg', depths=[32], repetitions=[1])),
    "k208_vgg16_whole_resnet": ("vgg16", 16, (225, 177), dict(
        block_type='resnet', depths=[32, 32], repetitions=[1, 1], bottleneck_enlarge_factor=2)),
    "k208_yaroslav_whole_heatmap": ("yaroslav", 8, (448, 384), dict(
        add_heatmap=True, avg_pool_size=(3, 3), hm_pool_size=(2, 2), add_conv=False,
        add_shortcut=True, fc_init_units=16, fc_layers=2)),
}


def arch_patch(case):
    net, div, (h, w) = ARCH[case]
    rng = np.random.RandomState(1000 + sorted(ARCH).index(case))
    model = patch_model(net, div)
    common.randomize_model(model, rng)
    c = 1 if net == 'yaroslav' else 3
    x = common.make_input(rng, (2, h, w, c))
    common.calibrate_bn(keras, model, x, rng)
    n = 3
    s, _ = common.calibrate_final(model, x, [model.layers[-1]], n, predict_fn(model))
    notes = [ORIENT_NOTE,
             "Patch classifier as end2end-all-conv get_dl_model builds it: %s(include_top=False, "
             "input_shape=None, pooling='avg') + Dropout(0.5) + Dense(3, softmax) with filter "
             "counts divided by %d (layer names/topology as Keras 2.0.8 builds them)." % (net, div)
             if net != 'yaroslav' else
             "YaroslavNet (dm_keras_ext.Yaroslav) with filter counts divided by %d." % div,
             "Weights random (seeded, He-normal scale); BN moving statistics non-trivial: per channel "
             "mean = batch mean + 0.3*std*N(0,1), var = batch var * U(0.5,2) measured on this "
             "input, gamma ~ U(0.5,1.5), beta ~ N(0,0.2); final Dense kernel "
             "scaled by %g so that the softmax is not saturated." % s]
    record(case, model, x, notes, keep=[model.layers[1].name],
           budget=700 * 1024 if net == 'resnet50' else common.NPZ_BUDGET)


def arch_whole(case, full=False):
    net, div, (h, w), kw = WHOLE[case]
    if full:
        div, (h, w) = 1, (1152, 896)
        kw = dict(kw)
        if 'depths' in kw:
            kw['depths'] = [d * 16 for d in kw['depths']]
    rng = np.random.RandomState(2000 + sorted(WHOLE).index(case))
    patch = patch_model(net, div)
    common.randomize_model(patch, rng)
    c = 1 if net == 'yaroslav' else 3
    pnotes = []
    if kw.get('add_heatmap'):
        px = common.make_input(rng, (2, 192, 192, c))
        s0, _ = common.calibrate_final(patch, px, [patch.layers[-1]], 3, predict_fn(patch))
        pnotes.append("patch classifier calibrated (Dense scale %g) before its weights were "
                      "copied into the heatmap Dense" % s0)
    x = common.make_input(rng, (2, h, w, c))
    common.calibrate_bn(keras, patch, x, rng)
    model, top_nb, final, hm = add_top_layers(patch, (h, w), patch_net=net, nb_class=2,
                                              dropout=0.5, **kw)
    skip = [model.layers[1].name] + ([hm.name] if hm is not None else [])
    common.randomize_model(model, rng, skip=skip)
    common.calibrate_bn(keras, model, x, rng)
    s, _ = common.calibrate_final(model, x, final, 2, predict_fn(model))
    notes = [ORIENT_NOTE,
             "Whole-image model built the end2end-all-conv way (dm_resnet.add_top_layers "
             "re-implemented): model0 = Model(patch.inputs, cut.output); block = "
             "model0(Input((%d, %d, %d))); then the top layers. The nested model is consumed "
             "with node index 1 in the config." % (h, w, c),
             "patch net %s, widths divided by %d; add_top_layers kwargs: %s; top_layer_nb=%d"
             % (net, div, json.dumps(kw), top_nb),
             "Weights random (seeded, He-normal scale); BN moving statistics non-trivial "
             "(per channel mean = batch mean + 0.3*std*N(0,1), var = batch var * U(0.5,2) on "
             "this input; gamma ~ U(0.5,1.5), beta ~ N(0,0.2))",
             "final Dense kernel(s) scaled by %g so that the softmax is not saturated" % s] + pnotes
    if kw.get('add_heatmap'):
        notes.append("avg_pool_size=(3,3) and hm_pool_size=(2,2) instead of the (7,7)/(5,5) "
                     "defaults so that a small input (448x384) still gives a 3x2 pooled heatmap "
                     "(the defaults need >= 704 px per side after the 64x reduction)")
    if case in ("k208_vgg16_whole_vgg", "k208_yaroslav_whole_heatmap") and not full:
        # like a real checkpoint: compiled, one training step (lr=0 keeps the weights; the BN
        # moving statistics move by Keras' momentum update), so training_config and
        # optimizer_weights exist in the file.
        from keras.optimizers import SGD
        model.compile(optimizer=SGD(0.0, momentum=.9, nesterov=True),
                      loss='categorical_crossentropy', metrics=['accuracy'])
        yb = np.eye(2, dtype=np.float32)[[0, 1]]
        model.train_on_batch(x, yb)
        s, _ = common.calibrate_final(model, x, final, 2, predict_fn(model))
        notes.append("compiled with SGD(lr=0, momentum=0.9, nesterov) and trained one batch "
                     "(weights unchanged, BN moving stats updated) before saving, so the file has "
                     "training_config and optimizer_weights like a real checkpoint")
    if full:
        out = os.path.join(common.BUILD, "bench")
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, case.replace("k208_", "k208_full_") + ".h5")
        model.save(path)
        y = model.predict(x, batch_size=1)
        np.savez_compressed(path[:-3] + "_io.npz", input=x, output=y)
        print("wrote", path)
        return
    keep = [model.layers[1].name]
    if net != 'yaroslav':  # the first inner conv of the 1-channel 448x384 case is 5 MB
        keep.append(model.layers[1].name + "/" + model.layers[1].layers[1].name)
    record(case, model, x, notes, keep=keep,
           budget=700 * 1024 if net == 'resnet50' else common.NPZ_BUDGET)


# ----------------------------------------------------------------------------
CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


for _c in ARCH:
    CASES[_c] = (lambda c: (lambda: arch_patch(c)))(_c)
for _c in WHOLE:
    CASES[_c] = (lambda c: (lambda: arch_whole(c, FULL)))(_c)

if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "keras208_layers.py")):
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "keras208_layers.py")).read())


if __name__ == "__main__":
    if CASE is None or "--list" in FLAGS:
        print("\n".join(sorted(CASES)))
        sys.exit(0)
    CASES[CASE]()
