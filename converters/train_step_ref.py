"""Genuine-Keras references for `allconv finetune`: one (and two, three) optimizer steps.

Records what genuine Keras does in `train_on_batch` for a tiny model that has what the paper's
training exercises: Conv2D (he_normal, l2) -> BatchNormalization -> relu -> a frozen
(trainable=False) BatchNormalization -> Conv2D (strides 2, l2) -> relu ->
GlobalAveragePooling2D -> Dense(2, softmax, l2); categorical cross-entropy with per-sample
weights (end2end-all-conv `auto_batch_balance`) or `class_weight`; and the paper's optimizers
built exactly as `dm_keras_ext.create_optimizer(optim, lr)` builds them. The `*_nested_2stage`
cases replay `do_2stage_training` on a whole-image-style model (an inner `Model` called on a new
Input, `model.layers[:top_layer_nb]` frozen, L2 re-assigned, recompile; then unfreeze, new L2,
recompile at lr * all_layer_multiplier). The `k208_patch_3stage_*` cases replay
`do_3stage_training(use_pretrained=True)` on a `get_dl_model`-style patch classifier (a
Conv2D-BN-relu base, GAP, Dropout(0.5), Dense(3, softmax, l2)): the last layer, then
`model.layers[top_layer_nb:]` with `weight_decay2` and `hidden_dropout2` re-assigned, then all
layers, each stage a fresh optimizer (run_patch3). The `*_resumed*` cases run the same
schedules (one step per stage) on the model `keras.models.load_model` reads back from a
checkpoint `model.save`d in stage 1, as the paper's `--resume-from` starts; their model.h5 is
that checkpoint, with the `trainable` flags this Keras wrote. The `*_wide` cases train the flat
model at 32 filters with a 1x1 convolution at stride 1 added (`conv_pw`): allconv trains that
network channels-last and routes its 1x1 convolution to oneDNN.

Each case writes fixtures/train_step/<case>/: `steps.npz`, `meta.json`, `model.h5` (the
untrained model as that Keras saved it, before compile) and `COMMAND`. Every case starts from
the same weights and batch (seeded numpy, not Keras's initialisers); Keras 2.0.8 on Theano gets
the conv kernels spatially flipped (Theano convolves), so both frameworks compute the same
activations up to the strided conv: there Theano's `same` rule (k//2 on both sides, then crop
to ceil(n/s)) and TensorFlow's (0 before, 1 after on these even sizes) differ, as in the
inference fixtures.

    .venv-tf/bin/python converters/train_step_ref.py tfk_sgd_balance
    .venv-keras208/bin/python converters/train_step_ref.py k208_sgd_balance
    python converters/train_step_ref.py --list {tfk|k208}

Keys of steps.npz (see meta.json "keys" too):
  x, y (one-hot), labels, sample_weight (what Keras was given; absent with class_weight),
  class_weight_per_sample (the weights class_weight expands to; class_weight cases only),
  w{k}/<path>/<var>   every weight (BN moving stats included) before step 1 (k=0) and after
                      step k; <path> is the layer name, prefixed by the enclosing nested
                      model's name (`patch/bn_a/moving_mean`).
  loss{k}             the loss train_on_batch reported for step k (weighted CE + L2 terms,
                      computed by Keras on the weights before the step).
  pred{k}             the model's training-mode softmax output on x before step k.
  opt{k}/...          the optimizer's state after step k (its own variable names).
  bn{k}/<path>/batch_mean, batch_var   per-channel statistics (float64, biased variance) of
                      the BN layer's training-mode input before step k.
  probe1/<path>/input, output   the frozen BN layer's (bn_frozen, patch/bn_a) training-mode
                      input and output before step 1 (`*_sgd_balance`, `*_nested_2stage`), with
  probe1/<path>/norm_batch, norm_moving   numpy normalisations of `input` with the batch
                      statistics and with the moving statistics (float64 -> float32).
  dropout{k}          (`*_patch_3stage_*`) the dropout layer's output / input in step k: the
                      mask train_on_batch drew, as multipliers 0 or 1 / (1 - rate).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

OUT = os.path.join(common.FIXTURES, "train_step")

H, W, C = 12, 10, 3
LABELS = np.array([0, 1, 0, 0])
CLASS_WEIGHT = {0: 1.0, 1: 3.0}          # {0: 1.0, 1: pos_cls_weight}
L2_CONV, L2_DENSE = 0.005, 0.01           # flat model
WIDE_FILTERS = 32                         # the `wide` flat model's convolutions
L2_BUILD, WD1, WD2 = 0.005, 0.02, 0.001   # nested: built with, stage-1 and stage-2 weight_decay
TOP_LAYER_NB = 2
EVIDENCE_BN = ('bn_frozen', 'patch/bn_a')   # full probe1 tensors for these layers only
ALL_LAYER_MULT = 0.1
BN_MOMENTUM, BN_EPS = 0.99, 1e-3

# k208_patch_3stage_*: do_3stage_training on a get_dl_model-style patch classifier
P3_H, P3_W = 8, 8
P3_LABELS = np.array([0, 1, 2, 0, 1, 0])   # 3 classes (background, malignant, benign)
P3_TOP_LAYER_NB = 4                       # model.layers[:4] = input, conv1, bn1, relu1
P3_WD, P3_WD2 = 0.01, 0.0001              # --weight-decay, --weight-decay2 (the paper's script)
P3_DROP, P3_DROP2 = 0.5, 0.0              # --hidden-dropout, --hidden-dropout2
P3_STEPS = (2, 1, 1)                      # train_on_batch calls per stage
# init_lr, top_layer_multiplier, all_layer_multiplier. The paper's script: 0.01, 0.01, 0.0001.
# Nadam steps a weight by about lr whatever its gradient: the paper's multipliers with
# init_lr 1 keep stage 3 (lr 1e-4) ten times above the 1e-5 comparison bound. SGD steps by
# 1.9 * lr * gradient: a 1e-4 ratio between stage 1 and stage 3 cannot leave stage 1 stable
# and stage 3 visible, so its multipliers are 0.1 and 0.01.
PATCH3 = {'sgd': (0.5, 0.1, 0.01), 'nadam': (1.0, 0.01, 0.0001)}

TFK_OPTS = ["sgd", "adam", "rmsprop", "adagrad", "adadelta", "adamax", "nadam"]
LR = {"sgd": 0.01, "adam": 0.01, "rmsprop": 0.01, "adagrad": 0.01, "adadelta": 1.0,
      "adamax": 0.01, "nadam": 0.01}


def cases():
    c = {}
    for o in TFK_OPTS:
        c["tfk_%s_balance" % o] = ("tfk", o, "balance", "flat")
    c["tfk_sgd_classweight"] = ("tfk", "sgd", "classweight", "flat")
    c["tfk_adam_wide"] = ("tfk", "adam", "balance", "wide")
    c["tfk_nested_2stage"] = ("tfk", "sgd", "balance", "nested")
    for o in ("sgd", "adam"):
        c["k208_%s_balance" % o] = ("k208", o, "balance", "flat")
    c["k208_sgd_classweight"] = ("k208", "sgd", "classweight", "flat")
    c["k208_sgd_wide"] = ("k208", "sgd", "balance", "wide")
    c["k208_nested_2stage"] = ("k208", "sgd", "balance", "nested")
    for o in PATCH3:
        c["k208_patch_3stage_%s" % o] = ("k208", o, "balance", "patch3")
    for o in PATCH3:
        c["k208_patch_3stage_resumed_%s" % o] = ("k208", o, "balance", "patch3_resumed")
    c["tfk_nested_2stage_resumed"] = ("tfk", "sgd", "balance", "nested_resumed")
    c["k208_nested_2stage_resumed"] = ("k208", "sgd", "balance", "nested_resumed")
    return c


def auto_batch_balance(sparse_y):
    """dm_image.py (DMNumpyArrayIterator / DMDirectoryIterator), verbatim:
    batch_w[sparse_y==uy] /= (sparse_y==uy).mean()"""
    batch_w = np.ones_like(sparse_y, dtype='float32')
    for uy in np.unique(sparse_y):
        batch_w[sparse_y == uy] /= (sparse_y == uy).mean()
    return batch_w


def create_optimizer(optimizers, optim_name, lr):
    """dm_keras_ext.create_optimizer, verbatim (lr positional)."""
    if optim_name == 'sgd':
        return optimizers.SGD(lr, momentum=.9, nesterov=True)
    elif optim_name == 'rmsprop':
        return optimizers.RMSprop(lr)
    elif optim_name == 'adagrad':
        return optimizers.Adagrad(lr)
    elif optim_name == 'adadelta':
        return optimizers.Adadelta(lr)
    elif optim_name == 'adamax':
        return optimizers.Adamax(lr)
    elif optim_name == 'adam':
        return optimizers.Adam(lr)
    elif optim_name == 'nadam':
        return optimizers.Nadam(lr)
    raise Exception('Unknown optimizer name: ' + optim_name)


# ----------------------------------------------------------------------------- models
def layers_mod(keras):
    return keras.layers, keras.regularizers, keras.models


def build_flat_model(keras, wide=False):
    """`wide`: 32 filters a convolution, and a 1x1 convolution at stride 1 (`conv_pw`, a
    ResNet bottleneck's) after the frozen BN: a network allconv trains channels-last, its
    1x1 convolutions routed to oneDNN."""
    Ls, R, M = layers_mod(keras)
    filters = WIDE_FILTERS if wide else 4
    inp = Ls.Input(shape=(H, W, C), name='input')
    x = Ls.Conv2D(filters, (3, 3), padding='same', kernel_initializer='he_normal',
                  kernel_regularizer=R.l2(L2_CONV), name='conv1')(inp)
    x = Ls.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS, name='bn1')(x)
    x = Ls.Activation('relu', name='relu1')(x)
    x = Ls.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS, name='bn_frozen')(x)
    if wide:
        x = Ls.Conv2D(filters, (1, 1), kernel_initializer='he_normal',
                      kernel_regularizer=R.l2(L2_CONV), name='conv_pw')(x)
        x = Ls.Activation('relu', name='relu_pw')(x)
    x = Ls.Conv2D(filters, (3, 3), strides=(2, 2), padding='same', kernel_initializer='he_normal',
                  kernel_regularizer=R.l2(L2_CONV), name='conv2')(x)
    x = Ls.Activation('relu', name='relu2')(x)
    x = Ls.GlobalAveragePooling2D(name='gap')(x)
    out = Ls.Dense(2, activation='softmax', kernel_initializer='he_normal',
                   kernel_regularizer=R.l2(L2_DENSE), name='dense')(x)
    model = M.Model(inp, out, name='flat')
    # frozen after building, as the paper does (layer.trainable = False, then compile)
    model.get_layer('bn_frozen').trainable = False
    return model


def build_nested_model(keras):
    """add_top_layers-style: patch model (conv->BN->relu) with a (None, None, 3) input, called
    on a new Input; a top of conv(strides 2)->BN->relu->GAP->Dense."""
    Ls, R, M = layers_mod(keras)
    pin = Ls.Input(shape=(None, None, C), name='patch_input')
    p = Ls.Conv2D(4, (3, 3), padding='same', kernel_initializer='he_normal',
                  kernel_regularizer=R.l2(L2_BUILD), name='conv_a')(pin)
    p = Ls.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS, name='bn_a')(p)
    p = Ls.Activation('relu', name='relu_a')(p)
    patch = M.Model(pin, p, name='patch')
    inp = Ls.Input(shape=(H, W, C), name='input')
    x = patch(inp)
    x = Ls.Conv2D(4, (3, 3), strides=(2, 2), padding='same', kernel_initializer='he_normal',
                  kernel_regularizer=R.l2(L2_BUILD), name='conv_t')(x)
    x = Ls.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS, name='bn_t')(x)
    x = Ls.Activation('relu', name='relu_t')(x)
    x = Ls.GlobalAveragePooling2D(name='gap')(x)
    out = Ls.Dense(2, activation='softmax', kernel_initializer='he_normal',
                   kernel_regularizer=R.l2(L2_BUILD), name='dense')(x)
    return M.Model(inp, out, name='whole')


def is_model(layer):
    return hasattr(layer, 'layers') and layer.__class__.__name__ in ('Model', 'Functional',
                                                                     'Sequential')


def walk(model, prefix=''):
    """(path, layer) for every non-container layer, nested models expanded."""
    for layer in model.layers:
        if is_model(layer):
            for item in walk(layer, prefix + layer.name + '/'):
                yield item
        else:
            yield prefix + layer.name, layer


def var_base(v):
    return v.name.split('/')[-1].split(':')[0]


def weight_items(model):
    out = []
    for path, layer in walk(model):
        for v in layer.weights:
            out.append((path + '/' + var_base(v), v))
    return out


def get_all(keras, model):
    K = keras.backend
    return {k: np.asarray(K.get_value(v)) for k, v in weight_items(model)}


def init_values(kind, keys_shapes):
    """Seeded, framework-independent initial values (TF kernel orientation): He-normal
    kernels, non-trivial BN parameters and moving statistics (far enough from the batch
    statistics that the two normalisations differ clearly)."""
    rng = np.random.RandomState(20240611)
    vals = {}
    for key, shape in keys_shapes:
        base = key.split('/')[-1]
        if base == 'kernel':
            fan_in = int(np.prod(shape[:-1]))
            v = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            if key.startswith('dense'):
                v *= 1.5   # softmax away from uniform
        elif base == 'bias':
            v = rng.normal(0, 0.1, shape)
        elif base == 'gamma':
            v = rng.uniform(0.6, 1.4, shape)
        elif base == 'beta':
            v = rng.normal(0, 0.2, shape)
        elif base == 'moving_mean':
            v = rng.normal(0.2, 0.4, shape)
        elif base == 'moving_variance':
            v = rng.uniform(0.4, 2.5, shape)
        else:
            raise ValueError(key)
        vals[key] = v.astype(np.float32)
    return vals


NOTES = {
    'k208': [
        'Keras 2.0.8 BatchNormalization.call ignores `trainable`: inside train_on_batch '
        '(learning phase 1) a frozen BN, and a BN inside a frozen nested Model, normalises with '
        'the batch statistics, and its moving-average updates still run (Container.updates '
        'collects every layer\'s updates whatever its trainable flag). Only gamma/beta stop '
        'training. Measured: bn_evidence / findings.',
        'Theano backend: moving_variance <- m*moving_variance + (1-m)*(biased batch var + '
        'epsilon), because theano_backend.normalize_batch_in_training returns '
        'T.inv(stdinv**2) = var + eps (measured: biased_var_plus_eps). Keras 2.0.8 on '
        'TensorFlow (the paper\'s backend) uses tf.nn.moments\' biased variance without eps '
        '(source reading; TF1 cannot run here).',
        'Theano convolves: kernels are stored flipped relative to TensorFlow (w*/.../kernel here '
        'are the tfk cases\' kernels flipped on both spatial axes at w0, and stay in Theano '
        'orientation after the steps). The activations then equal the tfk cases\' up to '
        'conv2/conv_t (strides 2, same): Theano pads k//2 on both sides and crops to '
        'ceil(n/s), TensorFlow pads 0 before / 1 after on these even sizes.',
        'Kernel L2 is built into the loss when the layer is built (Layer.add_weight -> '
        'add_loss(regularizer(weight)); L1L2 holds l2 as a constant): setting '
        'layer.kernel_regularizer.l2 later, as do_2stage_training does, changes get_config '
        '(and what model.save would write) but NOT the trained loss (measured: l2_evidence of '
        'k208_nested_2stage, "as_built"). Frozen layers\' L2 terms stay in the reported loss.',
        'Loss: mean_i(w_i * CE_i) / mean(w != 0) + L2; CE clips the softmax to '
        '[1e-7, 1 - 1e-7] (K.epsilon() = 1e-7).',
        'Optimizer hyper-parameters lr/momentum/beta_* are float32 Keras variables (config '
        'shows them rounded); epsilon is a Python float (1e-8 default in 2.0.8); decay 0.',
    ],
    'tfk': [
        'tf_keras.optimizers.X in tf-keras 2.21 are the new (non-legacy) optimizers. Defaults '
        'that differ from Keras 2.0.8: epsilon 1e-7 (2.0.8: 1e-8); Adagrad accumulator starts '
        'at 0.1 and the step is lr*g/sqrt(acc + eps) (2.0.8: from 0, lr*g/(sqrt(acc) + eps)); '
        'Adadelta default lr 0.001 (2.0.8: 1.0; here lr is given); RMSprop eps inside the sqrt '
        '(lr*g/sqrt(v + eps); 2.0.8: /(sqrt(v) + eps)); Nadam schedule u_t = '
        'beta_1*(1 - 0.5*0.96^t) (2.0.8: 0.96^(t*0.004)); no `decay` argument.',
        'BatchNormalization with trainable=False (and every layer of a Model whose trainable '
        'is set False: the setter recurses) runs in inference mode inside train_on_batch: it '
        'normalises with the moving statistics, which are not updated (measured).',
        'Trainable BN: moving_variance <- m*moving_variance + (1-m)*unbiased batch var '
        '(n/(n-1)) (fused kernel; measured).',
        'kernel_regularizer.l2 assigned after build and before compile DOES take effect '
        '(regularisation losses are callables evaluated when train_on_batch traces; measured: '
        'l2_evidence of tfk_nested_2stage, "as_reassigned"). Frozen layers\' L2 terms stay in '
        'the reported loss.',
        'Loss: sum_i(w_i * CE_i) / batch_size + L2; CE is computed from the softmax\'s logits '
        '(softmax_cross_entropy_with_logits), no clipping.',
    ],
}


# ----------------------------------------------------------------------------- frameworks
class TFK:
    name = 'tf-keras'

    def __init__(self):
        common.setup_env('tfkeras')
        os.environ['TF_ENABLE_ONEDNN_OPTS'] = '0'
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import tf_keras
        self.tf, self.keras = tf, tf_keras
        self.versions = {'tf_keras': tf_keras.__version__, 'tensorflow': tf.__version__}
        self.backend = 'tensorflow'
        self.kernel_orientation = 'tensorflow (cross-correlation, HWIO)'

    def probe(self, model, sub_in, tensors, x):
        """training-mode values of `tensors`, as train_on_batch's forward computes them."""
        saved = model.get_weights()
        m = self.keras.Model(sub_in, tensors)
        vals = m(x, training=True)   # eager BN updates: undone below
        vals = [np.asarray(v) for v in (vals if isinstance(vals, (list, tuple)) else [vals])]
        model.set_weights(saved)
        return vals

    def opt_state(self, opt):
        out = {}
        for v in opt.variables:
            out[v.name.split(':')[0]] = np.asarray(v.numpy())
        if hasattr(opt, '_u_product'):   # Nadam's momentum-schedule product (not in .variables)
            out[opt.name + '/u_product'] = np.asarray(opt._u_product.numpy())
        return out

    def opt_config(self, opt):
        cfg = opt.get_config()
        if hasattr(opt, 'adaptive_epsilon'):   # Adam: not in get_config
            cfg['adaptive_epsilon'] = bool(opt.adaptive_epsilon)
        return {k: (float(v) if isinstance(v, (np.floating, float)) else v)
                for k, v in cfg.items() if not callable(v)}


class K208:
    name = 'keras'

    def __init__(self):
        common.setup_env('theano')
        import keras
        import theano
        import theano.ifelse  # noqa: F401
        self.keras, self.theano = keras, theano
        self.versions = {'keras': keras.__version__, 'theano': theano.__version__}
        self.backend = 'theano'
        self.kernel_orientation = ('theano (Keras 2.0.8 on Theano convolves: kernels here are '
                                   'the tfk cases\' kernels flipped on both spatial axes)')

    def probe(self, model, sub_in, tensors, x):
        K = self.keras.backend
        f = K.function([sub_in, K.learning_phase()], list(tensors))
        return [np.asarray(v) for v in f([x, 1])]

    def opt_state(self, opt, params):
        K = self.keras.backend
        ws = opt.weights
        out = {'iterations': np.asarray(K.get_value(ws[0]))}
        rest = ws[1:]
        n = len(params)
        assert len(rest) % n == 0, (len(rest), n)
        slots = {'SGD': ['moment'], 'Adam': ['m', 'v'],
                 'Nadam': ['m', 'v']}[opt.__class__.__name__]
        for s, slot in enumerate(slots):
            for (key, _), v in zip(params, rest[s * n:(s + 1) * n]):
                out[slot + '/' + key] = np.asarray(K.get_value(v))
        if hasattr(opt, 'm_schedule'):   # Nadam's momentum-schedule product (not in .weights)
            out['m_schedule'] = np.asarray(K.get_value(opt.m_schedule))
        return out

    def opt_config(self, opt):
        cfg = opt.get_config()
        cfg = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in cfg.items()}
        if hasattr(opt, 'schedule_decay'):
            cfg['schedule_decay'] = opt.schedule_decay
        return cfg


# ----------------------------------------------------------------------------- evidence
def bn_stats(inp):
    a = inp.astype(np.float64).reshape(-1, inp.shape[-1])
    return a.mean(0), a.var(0), a.shape[0]


def bn_norm(inp, mean, var, gamma, beta, eps=BN_EPS):
    a = inp.astype(np.float64)
    return ((a - mean) / np.sqrt(var + eps) * gamma + beta).astype(np.float32)


def classify_update(before, after, bmean, bvar, n):
    """Which moving-average rule produced `after` from `before` (per BN layer)."""
    m = BN_MOMENTUM
    cand = {
        'unchanged': (before['moving_mean'], before['moving_variance']),
        'biased_var': (before['moving_mean'] * m + bmean * (1 - m),
                       before['moving_variance'] * m + bvar * (1 - m)),
        'unbiased_var': (before['moving_mean'] * m + bmean * (1 - m),
                         before['moving_variance'] * m + bvar * n / (n - 1) * (1 - m)),
        'biased_var_plus_eps': (before['moving_mean'] * m + bmean * (1 - m),
                                before['moving_variance'] * m + (bvar + BN_EPS) * (1 - m)),
    }
    errs = {}
    for k, (cm, cv) in cand.items():
        errs[k] = float(max(np.abs(after['moving_mean'] - cm).max(),
                            np.abs(after['moving_variance'] - cv).max()))
    best = min(errs, key=errs.get)
    return best, errs


def weighted_ce(pred, y, w):
    p = np.clip(pred.astype(np.float64), 1e-7, 1 - 1e-7)
    ce = -(y * np.log(p)).sum(-1)
    return float((ce * w).mean())


def l2_sum(weights, spec):
    return float(sum(l2 * np.square(weights[k].astype(np.float64)).sum()
                     for k, l2 in spec.items()))


# ----------------------------------------------------------------------------- main
def run(case):
    fw_kind, optim, weighting, arch = cases()[case]
    if arch in ('patch3', 'patch3_resumed'):
        return run_patch3(case, optim, resumed=arch == 'patch3_resumed')
    fw = TFK() if fw_kind == 'tfk' else K208()
    keras = fw.keras
    K = keras.backend
    flat = arch in ('flat', 'wide')
    model = build_flat_model(keras, arch == 'wide') if flat else build_nested_model(keras)

    items = weight_items(model)
    init = init_values(fw_kind, [(k, tuple(K.int_shape(v))) for k, v in items])
    for k, v in items:
        val = init[k]
        if fw_kind == 'k208' and k.endswith('/kernel') and val.ndim == 4:
            val = val[::-1, ::-1].copy()
        K.set_value(v, val)

    d = os.path.join(OUT, case)
    os.makedirs(d, exist_ok=True)
    x = common.make_input(np.random.RandomState(7), (len(LABELS), H, W, C))
    y = np.eye(2, dtype=np.float32)[LABELS]
    arrays = {'x': x, 'y': y, 'labels': LABELS.astype(np.int64)}
    fit_kw = {}
    if weighting == 'balance':
        sw = auto_batch_balance(LABELS)
        arrays['sample_weight'] = sw
        fit_kw['sample_weight'] = sw
        eff_w = sw.astype(np.float64)
    else:
        fit_kw['class_weight'] = dict(CLASS_WEIGHT)
        eff_w = np.array([CLASS_WEIGHT[int(l)] for l in LABELS], np.float64)
        arrays['class_weight_per_sample'] = eff_w.astype(np.float32)

    h5 = os.path.join(d, 'model.h5')
    resume_meta = None
    resumed = arch == 'nested_resumed'
    if resumed:
        # a whole-image checkpoint saved during stage 1 (DMAucModelCheckpoint: model.save),
        # loaded back as get_dl_model(resume_from=...) loads it
        for layer in model.layers[:TOP_LAYER_NB]:
            layer.trainable = False
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dense) or isinstance(layer, keras.layers.Conv2D):
                layer.kernel_regularizer.l2 = WD1
        model.compile(optimizer=create_optimizer(keras.optimizers, optim, LR[optim]),
                      loss='categorical_crossentropy', metrics=['accuracy'])
        model.train_on_batch(x, y, **fit_kw)
        if fw_kind == 'tfk':
            model.save(h5, save_format='h5')
        else:
            model.save(h5)
            from h5_loadback import _h5py2_strings
            _h5py2_strings()
        model = keras.models.load_model(h5)
        items = weight_items(model)
        import h5py
        with h5py.File(h5, 'r') as f:
            cfg = f.attrs['model_config']
        cfg = json.loads(cfg.decode('utf-8') if isinstance(cfg, bytes) else cfg)
        file_flags = {}
        for l in cfg['config']['layers']:
            file_flags[l['config']['name']] = l['config'].get('trainable')
            for il in l['config'].get('layers', []):
                file_flags[l['config']['name'] + '/' + il['config']['name']] = \
                    il['config'].get('trainable')
        built_l2 = {p + '/kernel': float(l.kernel_regularizer.l2) for p, l in walk(model)
                    if getattr(l, 'kernel_regularizer', None) is not None}
        resume_meta = {
            'checkpoint': 'model.layers[:%d] trainable=False; top-level Dense/Conv2D '
                          'kernel_regularizer.l2 = %g; compile(create_optimizer(%r, %g)); '
                          '1 x train_on_batch; model.save; keras.models.load_model'
                          % (TOP_LAYER_NB, WD1, optim, LR[optim]),
            'file_trainable_flags': None,   # top-level only: see nested_file_trainable_flags
            'nested_file_trainable_flags': file_flags,
            'loaded_trainable_attr': {p: bool(l.trainable) for p, l in
                                      [(l.name, l) for l in model.layers] +
                                      [('patch/' + l.name, l)
                                       for l in model.get_layer('patch').layers]},
            'loaded_kernel_l2': built_l2,
        }
    elif fw_kind == 'tfk':
        # the untrained model, as this Keras saves it (before compile: no optimizer)
        model.save(h5, include_optimizer=False, save_format='h5')
    else:
        model.save(h5)

    bn_paths = [p for p, l in walk(model) if l.__class__.__name__ == 'BatchNormalization']
    inner = model.get_layer('patch') if not flat else None
    probe_full = weighting == 'balance' and (optim == 'sgd')

    # the training schedule: list of (stage, n_steps); stage setup as do_2stage_training
    stages = []
    if flat:
        stages.append({'stage': 1, 'steps': 2, 'lr': LR[optim], 'setup': None})
    else:
        stages.append({'stage': 1, 'steps': 1 if resumed else 2, 'lr': LR[optim],
                       'setup': 'stage1'})
        stages.append({'stage': 2, 'steps': 1, 'lr': LR[optim] * ALL_LAYER_MULT,
                       'setup': 'stage2'})

    w_prev = get_all(keras, model)
    for k, v in w_prev.items():
        arrays['w0/' + k] = v
    steps_meta, bn_meta, reg_meta, opt_meta = [], [], [], []
    nested_consistency = []
    step = 0
    for st in stages:
        l2_now = None
        if st['setup'] == 'stage1':
            for layer in model.layers[:TOP_LAYER_NB]:
                layer.trainable = False
            l2_now = WD1
        elif st['setup'] == 'stage2':
            for layer in model.layers[:TOP_LAYER_NB]:
                layer.trainable = True
            l2_now = WD2
        if l2_now is not None:   # do_2stage_training, verbatim loop (top-level layers only)
            for layer in model.layers:
                if isinstance(layer, keras.layers.Dense) or isinstance(layer, keras.layers.Conv2D):
                    try:
                        layer.kernel_regularizer.l2 = l2_now
                    except AttributeError:
                        pass
        opt = create_optimizer(keras.optimizers, optim, st['lr'])
        model.compile(optimizer=opt, loss='categorical_crossentropy', metrics=['accuracy'])
        if fw_kind == 'tfk':
            params = [(k, v) for t in model.trainable_weights for k, v in items if v is t]
        else:
            model._make_train_function()
            params = [(k, v) for t in model._collected_trainable_weights
                      for k, v in items if v is t]
        opt_meta.append({'stage': st['stage'], 'class': opt.__class__.__name__,
                         'module': opt.__class__.__module__,
                         'call': 'create_optimizer(%r, %r)' % (optim, st['lr']),
                         'config': fw.opt_config(opt),
                         'trainable_params_in_order': [k for k, _ in params]})
        if resumed:
            opt_meta[-1]['frozen_layers'] = [l.name for l in model.layers if not l.trainable]
            opt_meta[-1]['model_trainable_weights'] = [
                k for t in model.trainable_weights for k, v in items if v is t]
            opt_meta[-1]['inner_trainable_attr'] = {
                l.name: bool(l.trainable) for l in model.get_layer('patch').layers}
        for _ in range(st['steps']):
            step += 1
            # training-mode forward at the pre-step weights
            tens_layers = [(p, l) for p, l in walk(model)
                           if l.__class__.__name__ == 'BatchNormalization']
            outer = [(p, l) for p, l in tens_layers if '/' not in p]
            inn = [(p, l) for p, l in tens_layers if '/' in p]
            tens = [model.output]
            for p, l in outer:
                tens += [l.input, l.output]
            vals = fw.probe(model, model.input, tens, x)
            pred = vals[0]
            got = {p: (vals[1 + 2 * i], vals[2 + 2 * i]) for i, (p, _) in enumerate(outer)}
            if inn:
                # the inner layers' tensors live in the patch model's own graph (node 0): run it
                # on x (it is called straight on the input) and check it against the patch's
                # output inside the whole model (its last node), both in training mode
                itens = [inner.outputs[0]]
                for p, l in inn:
                    itens += [l.input, l.output]
                ivals = fw.probe(model, inner.inputs[0], itens, x)
                for i, (p, _) in enumerate(inn):
                    got[p] = (ivals[1 + 2 * i], ivals[2 + 2 * i])
                outer_patch = fw.probe(model, model.input, [inner.get_output_at(-1)], x)[0]
                nested_consistency.append(float(np.abs(outer_patch - ivals[0]).max()))
            arrays['pred%d' % step] = pred
            for p in bn_paths:
                bi, bo = got[p]
                mean, var, n = bn_stats(bi)
                arrays['bn%d/%s/batch_mean' % (step, p)] = mean
                arrays['bn%d/%s/batch_var' % (step, p)] = var
                g, b = w_prev[p + '/gamma'], w_prev[p + '/beta']
                nb = bn_norm(bi, mean, var, g, b)
                nm = bn_norm(bi, w_prev[p + '/moving_mean'], w_prev[p + '/moving_variance'], g, b)
                e_b = float(np.abs(bo - nb).max())
                e_m = float(np.abs(bo - nm).max())
                if step == 1 and (probe_full or arch == 'nested') and p in EVIDENCE_BN:
                    arrays['probe1/%s/input' % p] = bi
                    arrays['probe1/%s/output' % p] = bo
                    arrays['probe1/%s/norm_batch' % p] = nb
                    arrays['probe1/%s/norm_moving' % p] = nm
                bn_meta.append({'step': step, 'stage': st['stage'], 'layer': p,
                                'layer_trainable_attr': bool(dict(walk(model))[p].trainable),
                                'inside_frozen_model': bool(not flat and '/' in p and
                                                            not inner.trainable),
                                'train_output_vs_batch_norm_maxabs': e_b,
                                'train_output_vs_moving_norm_maxabs': e_m,
                                'normalises_with': 'batch statistics' if e_b < e_m
                                else 'moving statistics',
                                '_stats_n': n})
            # the step
            res = model.train_on_batch(x, y, **fit_kw)
            loss = float(res[0] if isinstance(res, (list, tuple)) else res)
            arrays['loss%d' % step] = np.float32(loss)
            w_new = get_all(keras, model)
            for k, v in w_new.items():
                arrays['w%d/%s' % (step, k)] = v
            if fw_kind == 'tfk':
                ostate = fw.opt_state(opt)
            else:
                ostate = fw.opt_state(opt, params)
            for k, v in ostate.items():
                arrays['opt%d/%s' % (step, k)] = v
            # moving-statistics update rule, per BN layer
            for bm in bn_meta:
                if bm['step'] != step:
                    continue
                p = bm['layer']
                n = bm.pop('_stats_n')
                best, errs = classify_update(
                    {s: w_prev[p + '/' + s] for s in ('moving_mean', 'moving_variance')},
                    {s: w_new[p + '/' + s] for s in ('moving_mean', 'moving_variance')},
                    arrays['bn%d/%s/batch_mean' % (step, p)],
                    arrays['bn%d/%s/batch_var' % (step, p)], n)
                bm['moving_stats_update'] = best
                bm['moving_stats_update_maxabs_err'] = errs
                bm['gamma_beta_changed'] = bool(
                    not np.array_equal(w_prev[p + '/gamma'], w_new[p + '/gamma']) or
                    not np.array_equal(w_prev[p + '/beta'], w_new[p + '/beta']))
            # which L2 coefficients the reported loss contains
            ce = weighted_ce(pred, y, eff_w)
            kernels = [k for k in w_prev if k.endswith('/kernel')]
            if flat:
                cands = {'as_built': {k: (L2_DENSE if k.startswith('dense') else L2_CONV)
                                      for k in kernels}}
            elif resumed:
                cands = {'as_built': {k: built_l2[k] for k in kernels},
                         'as_reassigned': {k: (built_l2[k] if k.startswith('patch/')
                                               else l2_now) for k in kernels}}
            else:
                cands = {'as_built': {k: L2_BUILD for k in kernels},
                         'as_reassigned': {k: (L2_BUILD if k.startswith('patch/') else l2_now)
                                           for k in kernels}}
            reg = loss - ce
            cand_vals = {c: l2_sum(w_prev, s) for c, s in cands.items()}
            reg_meta.append({'step': step, 'stage': st['stage'], 'loss': loss,
                             'weighted_ce_from_pred': ce, 'loss_minus_ce': reg,
                             'l2_candidates': cand_vals,
                             'l2_coefficients': {c: s for c, s in cands.items()},
                             'effective': min(cand_vals, key=lambda c: abs(cand_vals[c] - reg))})
            steps_meta.append({'step': step, 'stage': st['stage'], 'lr': st['lr'],
                               'loss': loss,
                               'frozen_layers': [l.name for l in model.layers
                                                 if not l.trainable and l.weights],
                               'trainable_params': [k for k, _ in params]})
            w_prev = w_new

    # conclusions
    def summary(sel):
        rows = [b for b in bn_meta if sel(b)]
        if not rows:
            return None
        modes = sorted(set(b['normalises_with'] for b in rows))
        upd = sorted(set(b['moving_stats_update'] for b in rows))
        return {'normalises_with': modes, 'moving_stats_update': upd,
                'rows': ['step %d %s' % (b['step'], b['layer']) for b in rows]}

    findings = {}
    if flat:
        findings['frozen_bn (trainable=False layer)'] = summary(lambda b: b['layer'] == 'bn_frozen')
        findings['trainable_bn'] = summary(lambda b: b['layer'] == 'bn1')
    else:
        findings['bn in frozen nested model (stage 1)'] = summary(
            lambda b: b['layer'].startswith('patch/') and b['stage'] == 1)
        findings['bn in unfrozen nested model (stage 2)'] = summary(
            lambda b: b['layer'].startswith('patch/') and b['stage'] == 2)
        findings['top bn'] = summary(lambda b: not b['layer'].startswith('patch/'))
        findings['l2_effective'] = sorted(set(r['effective'] for r in reg_meta))
        findings['patch_output_inner_graph_vs_whole_model_maxabs'] = max(nested_consistency)
        if resumed:
            findings['trainable_weights_per_stage'] = {
                str(o['stage']): o['model_trainable_weights'] for o in opt_meta}

    n_steps = step
    meta = {
        'case': case,
        'framework': fw.name, 'versions': fw.versions, 'backend': fw.backend,
        'kernel_orientation': fw.kernel_orientation,
        'generator': 'converters/train_step_ref.py',
        'architecture': arch,
        'model': [{'path': p, 'class': l.__class__.__name__, 'trainable_attr_after_last_step':
                   bool(l.trainable),
                   'weights': [p + '/' + var_base(v) for v in l.weights]}
                  for p, l in walk(model)],
        'model_h5': ('model.h5: the stage-1 checkpoint the run resumes from, as this Keras '
                     'saved it (w0 weights)' if resumed else
                     'model.h5: the model before compile, as this Keras saved it (w0 weights)'),
        'resumed_from': resume_meta,
        'frozen_before_compile': (
            ['bn_frozen (layer.trainable = False after building; so saved in model.h5)']
            if flat else
            ['input', 'patch (stage 1 only: model.layers[:top_layer_nb])']),
        'nested': None if flat else {
            'top_layer_nb': TOP_LAYER_NB,
            'stage1': 'model.layers[:2] (input, patch) trainable=False; top-level Dense/Conv2D '
                      'kernel_regularizer.l2 = %g; compile; %d x train_on_batch'
                      % (WD1, stages[0]['steps']),
            'stage2': 'model.layers[:2] trainable=True; l2 = %g; compile (fresh optimizer) at '
                      'lr * %g; 1 x train_on_batch' % (WD2, ALL_LAYER_MULT),
            'l2_at_build': L2_BUILD, 'weight_decay': WD1, 'weight_decay2': WD2,
            'init_lr': LR[optim], 'all_layer_multiplier': ALL_LAYER_MULT},
        'l2_at_build': (dict({'conv1': L2_CONV, 'conv2': L2_CONV, 'dense': L2_DENSE},
                              **({'conv_pw': L2_CONV} if arch == 'wide' else {})) if flat
                        else {k[:-len('/kernel')]: v for k, v in built_l2.items()} if resumed
                        else {'patch/conv_a': L2_BUILD, 'conv_t': L2_BUILD, 'dense': L2_BUILD}),
        'bn': {'momentum': BN_MOMENTUM, 'epsilon': BN_EPS, 'axis': -1, 'center': True,
               'scale': True},
        'loss': 'categorical_crossentropy; reported loss = mean_i(w_i * CE_i) + sum l2*sum(k^2)'
                ' (Keras 2.0.8 clips probabilities to [1e-7, 1-1e-7]; tf-keras takes the softmax'
                ' logits)',
        'batch': {'shape': list(x.shape), 'labels': LABELS.tolist()},
        'weighting': ({'kind': 'sample_weight (auto_batch_balance)',
                       'formula': 'w[y==c] = 1 / mean(y==c) over the batch (dm_image.py)',
                       'sample_weight': auto_batch_balance(LABELS).tolist()}
                      if weighting == 'balance' else
                      {'kind': 'class_weight', 'class_weight': {str(k): v for k, v in
                                                                CLASS_WEIGHT.items()},
                       'per_sample': eff_w.tolist()}),
        'optimizer': opt_meta,
        'steps': steps_meta,
        'n_steps': n_steps,
        'bn_evidence': bn_meta,
        'l2_evidence': reg_meta,
        'findings': findings,
        'notes': NOTES[fw_kind],
        'keys': {
            'x': 'float32 %s NHWC' % (list(x.shape),), 'y': 'one-hot float32',
            'labels': 'int', 'sample_weight': 'float32 (balance cases)',
            'class_weight_per_sample': 'float32 (class_weight cases; Keras was given class_weight)',
            'w{k}/<path>/<var>': 'k=0 initial, k=1..n_steps after step k',
            'loss{k}': 'reported by train_on_batch for step k (pre-step weights)',
            'pred{k}': 'training-mode softmax before step k',
            'opt{k}/<name>': 'optimizer state after step k',
            'bn{k}/<path>/batch_mean|batch_var': 'float64 stats of the BN input before step k '
                                                '(biased var)',
            'probe1/<path>/input|output|norm_batch|norm_moving': 'BN training-mode evidence '
                                                                 'before step 1',
        },
    }
    np.savez_compressed(os.path.join(d, 'steps.npz'), **arrays)
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1, sort_keys=False, default=float)
    py = '.venv-tf/bin/python' if fw_kind == 'tfk' else '.venv-keras208/bin/python'
    with open(os.path.join(d, 'COMMAND'), 'w') as f:
        f.write('%s converters/train_step_ref.py %s\n' % (py, case))
    print(case, 'losses', [round(float(arrays['loss%d' % i]), 6) for i in range(1, n_steps + 1)])
    print(json.dumps(findings, indent=1))


def build_patch_model(keras):
    """get_dl_model(net, nb_class=3, weight_decay, hidden_dropout): an ImageNet-style base
    (Conv2D with bias, no regulariser -> BatchNormalization -> relu, twice) with
    pooling='avg', then Dropout(hidden_dropout) and Dense(3, softmax, l2(weight_decay)), in
    one flat Model (Model(input=base_model.input, output=preds) lists the base's layers)."""
    Ls, R, M = layers_mod(keras)
    inp = Ls.Input(shape=(P3_H, P3_W, C), name='input')
    x = Ls.Conv2D(4, (3, 3), padding='same', name='conv1')(inp)
    x = Ls.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS, name='bn1')(x)
    x = Ls.Activation('relu', name='relu1')(x)
    x = Ls.Conv2D(4, (3, 3), padding='same', name='conv2')(x)
    x = Ls.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS, name='bn2')(x)
    x = Ls.Activation('relu', name='relu2')(x)
    x = Ls.GlobalAveragePooling2D(name='gap')(x)
    x = Ls.Dropout(P3_DROP, name='dropout')(x)
    out = Ls.Dense(3, activation='softmax', kernel_regularizer=R.l2(P3_WD), name='dense')(x)
    return M.Model(inp, out, name='patch_clf')


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def file_trainable_flags(h5):
    """The `trainable` entry of every top-level layer's config in a saved model (None where
    the config has none: Keras 2.0.8's InputLayer)."""
    import h5py
    with h5py.File(h5, 'r') as f:
        cfg = f.attrs['model_config']
    cfg = json.loads(cfg.decode('utf-8') if isinstance(cfg, bytes) else cfg)
    return {l['config']['name']: l['config'].get('trainable') for l in cfg['config']['layers']}


def run_patch3(case, optim, resumed=False):
    """do_3stage_training(use_pretrained=True) with Keras 2.0.8, train_on_batch in place of
    fit_generator. Dropout(0.5) draws its mask inside train_on_batch; the mask of each step is
    read beforehand from a function on the same random stream that does not advance it
    (theano.function(no_default_updates=True)), and recorded.

    resumed (`k208_patch_3stage_resumed_*`): the run starts from a checkpoint saved during
    stage 1, as the paper's `--resume-from` does: stage 1's flags set (`model.layers[:-1]`
    trainable=False), compile, one train_on_batch, `model.save` (what ModelCheckpoint writes:
    the `trainable: false` flags, the training config and the optimizer's weights), then
    `keras.models.load_model` of that file (get_dl_model(resume_from=...)); the three stages
    run on the loaded model, one train_on_batch each. model.h5 is that checkpoint."""
    fw = K208()
    keras, theano = fw.keras, fw.theano
    K = keras.backend
    init_lr, top_mult, all_mult = PATCH3[optim]
    np.random.seed(2017)   # K.dropout seeds its random stream from numpy's global generator
    model = build_patch_model(keras)
    items = weight_items(model)
    init = init_values('k208', [(k, tuple(K.int_shape(v))) for k, v in items])
    for k, v in items:
        val = init[k]
        if k.endswith('/kernel') and val.ndim == 4:
            val = val[::-1, ::-1].copy()
        K.set_value(v, val)

    d = os.path.join(OUT, case)
    os.makedirs(d, exist_ok=True)
    n = len(P3_LABELS)
    x = common.make_input(np.random.RandomState(11), (n, P3_H, P3_W, C))
    y = np.eye(3, dtype=np.float32)[P3_LABELS]
    sw = auto_batch_balance(P3_LABELS)
    arrays = {'x': x, 'y': y, 'labels': P3_LABELS.astype(np.int64), 'sample_weight': sw}
    h5 = os.path.join(d, 'model.h5')
    steps_per_stage = (1, 1, 1) if resumed else P3_STEPS
    resume_meta = None
    if resumed:
        for layer in model.layers[:-1]:
            layer.trainable = False
        model.compile(optimizer=create_optimizer(keras.optimizers, optim, init_lr),
                      loss='categorical_crossentropy', metrics=['accuracy'])
        model.train_on_batch(x, y, sample_weight=sw)
        model.save(h5)
        # Keras 2.0.8 reads string attributes as h5py 2 gave them (bytes)
        from h5_loadback import _h5py2_strings
        _h5py2_strings()
        model = keras.models.load_model(h5)
        items = weight_items(model)
        flags = file_trainable_flags(h5)
        resume_meta = {
            'checkpoint': 'model.layers[:-1] trainable=False; compile(create_optimizer(%r, %g)); '
                          '1 x train_on_batch; model.save; keras.models.load_model'
                          % (optim, init_lr),
            'file_trainable_flags': flags,
            'loaded_trainable_attr': {l.name: bool(l.trainable) for l in model.layers},
            'loaded_model_trainable_weights': [k for t in model.trainable_weights
                                               for k, v in items if v is t],
        }
        assert [n for n, t in flags.items() if t is False] == \
            [l.name for l in model.layers[1:-1]], flags
    else:
        model.save(h5)

    dense, dropout = model.layers[-1], model.layers[-2]
    assert dense.name == 'dense' and dropout.name == 'dropout'
    bn_paths = [p for p, l in walk(model) if l.__class__.__name__ == 'BatchNormalization']
    probe_t = [model.output, dropout.input, dropout.output]
    for p in bn_paths:
        probe_t += [model.get_layer(p).input]
    # training-mode forward on the train function's random stream, without advancing it
    probe = theano.function([model.input, K.learning_phase()], probe_t,
                            no_default_updates=True, on_unused_input='ignore',
                            allow_input_downcast=True)

    stages = [
        {'stage': 1, 'name': 'last layer', 'lr': init_lr, 'steps': steps_per_stage[0]},
        {'stage': 2, 'name': 'top layers', 'lr': init_lr * top_mult,
         'steps': steps_per_stage[1]},
        {'stage': 3, 'name': 'all layers', 'lr': init_lr * all_mult,
         'steps': steps_per_stage[2]},
    ]
    w_prev = get_all(keras, model)
    for k, v in w_prev.items():
        arrays['w0/' + k] = v
    steps_meta, opt_meta, reg_meta, drop_meta, bn_meta = [], [], [], [], []
    step = 0
    for st in stages:
        # do_3stage_training, verbatim statements (org_model is model: one GPU)
        org_model = model
        if st['stage'] == 1:
            for layer in org_model.layers[:-1]:
                layer.trainable = False
        elif st['stage'] == 2:
            for layer in org_model.layers[P3_TOP_LAYER_NB:]:
                layer.trainable = True
            dense_layer = org_model.layers[-1]
            dropout_layer = org_model.layers[-2]
            dense_layer.kernel_regularizer.l2 = P3_WD2
            dropout_layer.rate = P3_DROP2
        else:
            for layer in org_model.layers[:P3_TOP_LAYER_NB]:
                layer.trainable = True
        opt = create_optimizer(keras.optimizers, optim, st['lr'])
        model.compile(optimizer=opt, loss='categorical_crossentropy', metrics=['accuracy'])
        model._make_train_function()
        params = [(k, v) for t in model._collected_trainable_weights for k, v in items if v is t]
        tw = [k for t in model.trainable_weights for k, v in items if v is t]
        frozen = [l.name for l in model.layers if not l.trainable]
        opt_meta.append({'stage': st['stage'], 'class': opt.__class__.__name__,
                         'module': opt.__class__.__module__,
                         'call': 'create_optimizer(%r, %r)' % (optim, st['lr']),
                         'config': fw.opt_config(opt),
                         'trainable_params_in_order': [k for k, _ in params],
                         'model_trainable_weights': tw,
                         'frozen_layers': frozen,
                         'attributes_after_setup': {
                             'dense.kernel_regularizer.l2': float(dense.kernel_regularizer.l2),
                             'dropout.rate': float(dropout.rate)}})
        for _ in range(st['steps']):
            step += 1
            vals = probe(x, 1)
            pred, d_in, d_out = vals[0], vals[1], vals[2]
            assert np.all(d_in != 0), 'a pooled feature is 0: the dropout mask is not readable'
            mult = (d_out / d_in).astype(np.float32)
            assert set(np.unique(mult).tolist()) <= {0.0, 2.0}, np.unique(mult)
            assert np.array_equal(d_in * mult, d_out)
            arrays['pred%d' % step] = pred
            arrays['dropout%d' % step] = mult
            for i, p in enumerate(bn_paths):
                mean, var, cnt = bn_stats(vals[3 + i])
                bn_meta.append({'step': step, 'layer': p, 'mean': mean, 'var': var, 'n': cnt})
            res = model.train_on_batch(x, y, sample_weight=sw)
            loss = float(res[0] if isinstance(res, (list, tuple)) else res)
            arrays['loss%d' % step] = np.float32(loss)
            w_new = get_all(keras, model)
            for k, v in w_new.items():
                arrays['w%d/%s' % (step, k)] = v
            for k, v in fw.opt_state(opt, params).items():
                arrays['opt%d/%s' % (step, k)] = v
            for bm in bn_meta:
                if bm['step'] == step and 'moving_stats_update' not in bm:
                    p = bm['layer']
                    best, _ = classify_update(
                        {s: w_prev[p + '/' + s] for s in ('moving_mean', 'moving_variance')},
                        {s: w_new[p + '/' + s] for s in ('moving_mean', 'moving_variance')},
                        bm['mean'], bm['var'], bm['n'])
                    bm['moving_stats_update'] = best
            # the reported loss against the candidates: L2 as built or as re-assigned,
            # dropout as built (the recorded mask) or at the re-assigned rate (none)
            kern = w_prev['dense/kernel'].astype(np.float64)
            logits_nodrop = (d_in.astype(np.float64) @ kern +
                             w_prev['dense/bias'].astype(np.float64))
            ce_mask = weighted_ce(pred, y, sw.astype(np.float64))
            ce_nodrop = weighted_ce(softmax(logits_nodrop), y, sw.astype(np.float64))
            l2_built = P3_WD * float(np.square(kern).sum())
            l2_re = float(dense.kernel_regularizer.l2) * float(np.square(kern).sum())
            cand = {'l2 as built, dropout as built': ce_mask + l2_built,
                    'l2 re-assigned, dropout as built': ce_mask + l2_re,
                    'l2 as built, dropout re-assigned': ce_nodrop + l2_built,
                    'l2 re-assigned, dropout re-assigned': ce_nodrop + l2_re}
            reg_meta.append({'step': step, 'stage': st['stage'], 'loss': loss,
                             'candidates': cand,
                             'abs_err': {c: abs(v - loss) for c, v in cand.items()},
                             'effective': min(cand, key=lambda c: abs(cand[c] - loss))})
            drop_meta.append({'step': step, 'stage': st['stage'],
                              'layer_rate_attr': float(dropout.rate),
                              'dropped_fraction': float((mult == 0).mean()),
                              'multipliers': sorted(set(np.unique(mult).tolist()))})
            moved = {k: float(np.abs(w_new[k] - w_prev[k]).max()) for k, _ in params}
            steps_meta.append({'step': step, 'stage': st['stage'], 'lr': st['lr'],
                               'loss': loss, 'frozen_layers': frozen,
                               'trainable_params': [k for k, _ in params],
                               'max_abs_change_of_trained_weights': max(moved.values()),
                               'min_over_trained_weights_of_max_abs_change':
                                   min(moved.values()),
                               'untrained_weights_unchanged': all(
                                   np.array_equal(w_new[k], w_prev[k]) for k in w_new
                                   if k not in moved and 'moving_' not in k)})
            w_prev = w_new

    for bm in bn_meta:
        for k in ('mean', 'var', 'n'):
            bm.pop(k)
    findings = {
        # stage 1 runs before the re-assignment: its candidates coincide
        'reported_loss_is_in_stages_2_3': sorted(set(r['effective'] for r in reg_meta
                                                     if r['stage'] > 1)),
        'next_best_candidate_abs_err_in_stages_2_3': min(
            e for r in reg_meta if r['stage'] > 1 for c, e in r['abs_err'].items()
            if c != r['effective']),
        'dropout_in_stages_2_3': sorted(set(
            'rate %g applied (multipliers %s) while layer.rate = %g' % (
                P3_DROP, m['multipliers'], m['layer_rate_attr'])
            for m in drop_meta if m['stage'] > 1)),
        'bn_moving_stats_update': sorted(set(b['moving_stats_update'] for b in bn_meta)),
        'trainable_weights_per_stage': {str(o['stage']): o['model_trainable_weights']
                                        for o in opt_meta},
    }
    meta = {
        'case': case, 'framework': fw.name, 'versions': fw.versions, 'backend': fw.backend,
        'kernel_orientation': fw.kernel_orientation,
        'generator': 'converters/train_step_ref.py',
        'architecture': 'patch3',
        'model': [{'path': p, 'class': l.__class__.__name__,
                   'weights': [p + '/' + var_base(v) for v in l.weights]}
                  for p, l in walk(model)],
        'model_h5': ('model.h5: the stage-1 checkpoint the run resumes from, as this Keras '
                     'saved it (w0 weights; layers[1:-1] trainable: false)' if resumed else
                     'model.h5: the model before compile, as this Keras saved it (w0 weights)'),
        'resumed_from': resume_meta,
        'three_stage': {
            'recipe': 'do_3stage_training(use_pretrained=True, optim=%r, init_lr=%g, '
                      'top_layer_multiplier=%g, all_layer_multiplier=%g, top_layer_nb=%d, '
                      'weight_decay2=%g, hidden_dropout2=%g); get_dl_model(weight_decay=%g, '
                      'hidden_dropout=%g)' % (optim, init_lr, top_mult, all_mult,
                                               P3_TOP_LAYER_NB, P3_WD2, P3_DROP2, P3_WD,
                                               P3_DROP),
            'optimizer': optim, 'init_lr': init_lr, 'top_layer_multiplier': top_mult,
            'all_layer_multiplier': all_mult, 'top_layer_nb': P3_TOP_LAYER_NB,
            'weight_decay': P3_WD, 'weight_decay2': P3_WD2,
            'hidden_dropout': P3_DROP, 'hidden_dropout2': P3_DROP2,
            'steps_per_stage': list(steps_per_stage),
            'stages': [{'stage': s['stage'], 'name': s['name'], 'lr': s['lr']} for s in stages],
        },
        'nested': None,
        'bn': {'momentum': BN_MOMENTUM, 'epsilon': BN_EPS, 'axis': -1, 'center': True,
               'scale': True},
        'batch': {'shape': list(x.shape), 'labels': P3_LABELS.tolist()},
        'weighting': {'kind': 'sample_weight (auto_batch_balance)',
                      'formula': 'w[y==c] = 1 / mean(y==c) over the batch (dm_image.py)',
                      'sample_weight': sw.tolist()},
        'optimizer': opt_meta,
        'steps': steps_meta,
        'n_steps': step,
        'loss_evidence': reg_meta,
        'dropout_evidence': drop_meta,
        'bn_evidence': bn_meta,
        'findings': findings,
        'notes': NOTES['k208'] + [
            'Dropout draws a fresh mask in each train_on_batch; dropout{k} is the mask of step '
            'k as multipliers (0 or 1/(1-rate)), read from the same Theano random stream '
            'before the step without advancing it.',
            'dropout_layer.rate = hidden_dropout2 re-assigned after the model is built is '
            'ignored, as kernel_regularizer.l2 is: the train function was built from the '
            'layer calls of get_dl_model (loss_evidence, dropout_evidence).',
        ],
        'keys': {
            'x': 'float32 %s NHWC' % (list(x.shape),), 'y': 'one-hot float32',
            'labels': 'int', 'sample_weight': 'float32 (auto_batch_balance)',
            'w{k}/<path>/<var>': 'k=0 initial, k=1..n_steps after step k',
            'loss{k}': 'reported by train_on_batch for step k (pre-step weights)',
            'pred{k}': 'training-mode softmax before step k, with the step\'s dropout mask',
            'dropout{k}': 'float32 (batch, 4): the dropout layer\'s output / input in step k',
            'opt{k}/<name>': 'optimizer state after step k',
        },
    }
    np.savez_compressed(os.path.join(d, 'steps.npz'), **arrays)
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1, sort_keys=False, default=float)
    with open(os.path.join(d, 'COMMAND'), 'w') as f:
        f.write('.venv-keras208/bin/python converters/train_step_ref.py %s\n' % case)
    print(case, 'losses', [round(float(arrays['loss%d' % i]), 6) for i in range(1, step + 1)])
    print(json.dumps([(s['step'], s['lr'], s['max_abs_change_of_trained_weights'],
                       s['min_over_trained_weights_of_max_abs_change']) for s in steps_meta]))
    print(json.dumps(findings, indent=1))


def main(argv):
    if argv and argv[0] == '--list':
        want = argv[1] if len(argv) > 1 else None
        for c, spec in cases().items():
            if want is None or spec[0] == want:
                print(c)
        return
    if len(argv) != 1 or argv[0] not in cases():
        sys.exit('usage: train_step_ref.py CASE | --list [tfk|k208]; cases: ' +
                 ' '.join(cases()))
    run(argv[0])


if __name__ == '__main__':
    main(sys.argv[1:])
