"""References for allconv's native patch classifiers (src/keras/nets.rs): the four
networks end2end-all-conv's `get_dl_model` builds, at full width, as genuine Keras 2.0.8
(Theano backend) builds them in a fresh process.

Usage (from the repo root; one case per process, because Keras numbers auto-generated
layer names per process):
    .venv-keras208/bin/python converters/patch_nets_ref.py CASE [--fixture] [--out DIR]
    .venv-keras208/bin/python converters/patch_nets_ref.py --list

CASE: resnet50, resnet50_nodrop (hidden_dropout=0: no Dropout layer), vgg16, vgg19,
yaroslav. All with nb_class=3, weight_decay=0.01, hidden_dropout=0.5 unless named.

--fixture: writes fixtures/patch_nets/CASE.json: the `model_config` Keras saves (as a
JSON object), `count_params`, the get_dl_model arguments.
--out DIR: writes, with seeded random weights (He-normal scale, BatchNorm statistics
calibrated so they matter):
    DIR/CASE_notop.h5  `base_model.save_weights` (Yaroslav: the whole model's, it has no
                       base model), the format of keras.applications' ImageNet files
    DIR/CASE_io.npz    `input` (2 x H x W x C), `output` (the full model's predictions),
                       `top_kernel`, `top_bias` (the full model's final Dense)
    DIR/CASE_io.json   the final Dense's name, the input size, the file backend
The weight files are too big to commit (ResNet50 ~94 MB): tests/patch_nets.rs writes them
into a temporary directory when it runs.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CASES = {
    # case: (net, hidden_dropout, input H x W)
    "resnet50": ("resnet50", 0.5, (197, 197)),
    "resnet50_nodrop": ("resnet50", 0.0, (197, 197)),
    "vgg16": ("vgg16", 0.5, (64, 48)),
    "vgg19": ("vgg19", 0.5, (64, 48)),
    "yaroslav": ("yaroslav", 0.5, (64, 80)),
}
NB_CLASS = 3
WEIGHT_DECAY = 0.01
SEED = 20170808


def parse_args(argv):
    case, fixture, out = None, False, None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--list":
            print("\n".join(sorted(CASES)))
            sys.exit(0)
        elif a == "--fixture":
            fixture = True
        elif a == "--out":
            i += 1
            out = argv[i]
        elif case is None and a in CASES:
            case = a
        else:
            sys.exit("usage: patch_nets_ref.py CASE [--fixture] [--out DIR]; cases: %s"
                     % ", ".join(sorted(CASES)))
        i += 1
    if case is None or not (fixture or out):
        sys.exit("usage: patch_nets_ref.py CASE [--fixture] [--out DIR]")
    return case, fixture, out


CASE, FIXTURE, OUT = parse_args(sys.argv[1:])
common.setup_env("theano")

import numpy as np  # noqa: E402
import keras  # noqa: E402
import theano  # noqa: E402,F401
import theano.ifelse  # noqa: E402,F401
from keras import backend as K  # noqa: E402
from keras.layers import (Input, Conv2D, BatchNormalization, Activation,  # noqa: E402
                          MaxPooling2D, GlobalAveragePooling2D, Dense, Dropout)
from keras.models import Model  # noqa: E402
from keras.regularizers import l2  # noqa: E402



def get_json_type(obj):
    """keras.models.save_model's serializer (a local function there, copied)."""
    if hasattr(obj, 'get_config'):
        return {'class_name': obj.__class__.__name__, 'config': obj.get_config()}
    if type(obj).__module__ == np.__name__:
        if isinstance(obj, np.ndarray):
            return {'type': type(obj), 'value': obj.tolist()}
        return obj.item()
    if callable(obj):
        return obj.__name__
    if type(obj).__name__ == type.__name__:
        return obj.__name__
    raise TypeError('Not JSON Serializable:', obj)


CHANNEL_AXIS = 3 if K.image_data_format() == "channels_last" else 1


def Yaroslav(input_shape=None, classes=5):
    """end2end-all-conv dm_keras_ext.Yaroslav (copied; its module imports more than
    this environment has)."""
    if input_shape is None:
        input_shape = (None, None, 1) if K.image_data_format() == "channels_last" else (1, None, None)
    img_input = Input(shape=input_shape)
    x = img_input
    for b, f in enumerate([32, 64, 128, 256, 256, 512], start=1):
        x = Conv2D(f, (3, 3), padding='same', name='block%d_conv1' % b)(x)
        x = BatchNormalization(axis=CHANNEL_AXIS)(x)
        x = Activation('relu')(x)
        x = Conv2D(f, (3, 3), padding='same', name='block%d_conv2' % b)(x)
        x = BatchNormalization(axis=CHANNEL_AXIS)(x)
        x = Activation('relu')(x)
        x = MaxPooling2D((2, 2), strides=(2, 2), name='block%d_pool' % b)(x)
    x = GlobalAveragePooling2D()(x)
    x = Dense(classes, activation='softmax', name='predictions')(x)
    return Model(img_input, x, name='yaroslav')


def get_dl_model(net, nb_class, hidden_dropout, weight_decay):
    """dm_keras_ext.get_dl_model with use_pretrained=False, resume_from=None: returns
    (model, base_model); base_model is None for yaroslav."""
    if net == 'resnet50':
        from keras.applications.resnet50 import ResNet50 as NNet
    elif net == 'vgg16':
        from keras.applications.vgg16 import VGG16 as NNet
    elif net == 'vgg19':
        from keras.applications.vgg19 import VGG19 as NNet
    elif net == 'yaroslav':
        return Yaroslav(classes=nb_class), None
    base_model = NNet(weights=None, include_top=False, input_shape=None, pooling='avg')
    x = base_model.output
    if hidden_dropout > 0.:
        x = Dropout(hidden_dropout)(x)
    preds = Dense(nb_class, activation='softmax', kernel_regularizer=l2(weight_decay))(x)
    model = Model(input=base_model.input, output=preds)
    return model, base_model


def calibrate_bn_fast(model, x, rng, passes):
    """common.calibrate_bn's statistics (mean = batch mean + 0.3 std N(0,1), var = batch
    var U(0.5, 2)), all layers at once per pass: one prediction per pass instead of one per
    BatchNormalization layer (53 in ResNet50)."""
    bns = [l for l in model.layers if l.__class__.__name__ == "BatchNormalization"]
    if not bns:
        return
    probe = Model(model.inputs, [l.get_input_at(0) for l in bns])
    noise = {}
    for l in bns:
        n = l.get_weights()[-1].shape
        noise[l.name] = (rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n))
    for _ in range(passes):
        vals = probe.predict(x, batch_size=len(x))
        for l, v in zip(bns, vals):
            ax = l.axis % v.ndim
            red = tuple(i for i in range(v.ndim) if i != ax)
            m, sd = v.mean(axis=red), v.std(axis=red)
            sd = np.maximum(sd, 0.1 * np.median(sd) + 1e-3)
            zn, un = noise[l.name]
            w = l.get_weights()
            w[-2] = (m + sd * zn).astype(np.float32)
            w[-1] = (sd * sd * un).astype(np.float32)
            l.set_weights(w)


def main():
    net, dropout, (h, w) = CASES[CASE]
    np.random.seed(SEED)
    model, base = get_dl_model(net, NB_CLASS, dropout, WEIGHT_DECAY)
    if FIXTURE:
        d = os.path.join(common.FIXTURES, "patch_nets")
        os.makedirs(d, exist_ok=True)
        # The text Model.save writes into the model_config attribute.
        text = json.dumps({'class_name': model.__class__.__name__, 'config': model.get_config()},
                          default=get_json_type)
        rec = {
            "generator": ".venv-keras208 (keras %s, backend %s)" % (keras.__version__, K.backend()),
            "command": ".venv-keras208/bin/python converters/patch_nets_ref.py %s --fixture" % CASE,
            "get_dl_model": {"net": net, "nb_class": NB_CLASS, "use_pretrained": False,
                             "hidden_dropout": dropout, "weight_decay": WEIGHT_DECAY},
            "count_params": int(model.count_params()),
            "layers": len(model.layers),
            "output_shape": list(model.output_shape),
            "model_config": json.loads(text),
        }
        with open(os.path.join(d, CASE + ".json"), "w") as f:
            json.dump(rec, f, indent=1, sort_keys=True)
            f.write("\n")
    if OUT:
        os.makedirs(OUT, exist_ok=True)
        rng = np.random.RandomState(SEED + sorted(CASES).index(CASE))
        common.randomize_model(model, rng)
        c = 1 if net == 'yaroslav' else 3
        x = common.make_input(rng, (2, h, w, c)).astype(np.float32)
        calibrate_bn_fast(model, x, rng, passes=4 if net == 'resnet50' else 2)
        top = model.layers[-1]
        s, y = common.calibrate_final(model, x, [top], NB_CLASS,
                                      lambda v: model.predict(v, batch_size=len(v)))
        (base if base is not None else model).save_weights(os.path.join(OUT, CASE + "_notop.h5"))
        kernel, bias = top.get_weights()
        np.savez(os.path.join(OUT, CASE + "_io.npz"), input=x, output=y.astype(np.float32),
                 top_kernel=kernel, top_bias=bias)
        with open(os.path.join(OUT, CASE + "_io.json"), "w") as f:
            json.dump({"top_dense": top.name, "input_size": [h, w], "channels": c,
                       "backend": K.backend(), "final_scale": s,
                       "weights_of": "base_model" if base is not None else "model"}, f)


main()
