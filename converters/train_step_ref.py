"""Genuine-Keras references for `allconv finetune`: one (and two, three) optimizer steps.

Records what genuine Keras does in `train_on_batch` for a tiny model that has what the paper's
training exercises: Conv2D (he_normal, l2) -> BatchNormalization -> relu -> a frozen
(trainable=False) BatchNormalization -> Conv2D (strides 2, l2) -> relu ->
GlobalAveragePooling2D -> Dense(2, softmax, l2); categorical cross-entropy with per-sample
weights (end2end-all-conv `auto_batch_balance`) or `class_weight`; and the paper's optimizers
built exactly as `dm_keras_ext.create_optimizer(optim, lr)` builds them. The `*_nested_2stage`
cases replay `do_2stage_training` on a whole-image-style model (an inner `Model` called on a new
Input, `model.layers[:top_layer_nb]` frozen, L2 re-assigned, recompile; then unfreeze, new L2,
recompile at lr * all_layer_multiplier).

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
L2_BUILD, WD1, WD2 = 0.005, 0.02, 0.001   # nested: built with, stage-1 and stage-2 weight_decay
TOP_LAYER_NB = 2
EVIDENCE_BN = ('bn_frozen', 'patch/bn_a')   # full probe1 tensors for these layers only
ALL_LAYER_MULT = 0.1
BN_MOMENTUM, BN_EPS = 0.99, 1e-3

TFK_OPTS = ["sgd", "adam", "rmsprop", "adagrad", "adadelta", "adamax", "nadam"]
LR = {"sgd": 0.01, "adam": 0.01, "rmsprop": 0.01, "adagrad": 0.01, "adadelta": 1.0,
      "adamax": 0.01, "nadam": 0.01}


def cases():
    c = {}
    for o in TFK_OPTS:
        c["tfk_%s_balance" % o] = ("tfk", o, "balance", "flat")
    c["tfk_sgd_classweight"] = ("tfk", "sgd", "classweight", "flat")
    c["tfk_nested_2stage"] = ("tfk", "sgd", "balance", "nested")
    for o in ("sgd", "adam"):
        c["k208_%s_balance" % o] = ("k208", o, "balance", "flat")
    c["k208_sgd_classweight"] = ("k208", "sgd", "classweight", "flat")
    c["k208_nested_2stage"] = ("k208", "sgd", "balance", "nested")
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


def build_flat_model(keras):
    Ls, R, M = layers_mod(keras)
    inp = Ls.Input(shape=(H, W, C), name='input')
    x = Ls.Conv2D(4, (3, 3), padding='same', kernel_initializer='he_normal',
                  kernel_regularizer=R.l2(L2_CONV), name='conv1')(inp)
    x = Ls.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS, name='bn1')(x)
    x = Ls.Activation('relu', name='relu1')(x)
    x = Ls.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS, name='bn_frozen')(x)
    x = Ls.Conv2D(4, (3, 3), strides=(2, 2), padding='same', kernel_initializer='he_normal',
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
        slots = {'SGD': ['moment'], 'Adam': ['m', 'v']}[opt.__class__.__name__]
        for s, slot in enumerate(slots):
            for (key, _), v in zip(params, rest[s * n:(s + 1) * n]):
                out[slot + '/' + key] = np.asarray(K.get_value(v))
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
    fw = TFK() if fw_kind == 'tfk' else K208()
    keras = fw.keras
    K = keras.backend
    model = build_flat_model(keras) if arch == 'flat' else build_nested_model(keras)

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

    # the untrained model, as this Keras saves it (before compile: no optimizer)
    h5 = os.path.join(d, 'model.h5')
    if fw_kind == 'tfk':
        model.save(h5, include_optimizer=False, save_format='h5')
    else:
        model.save(h5)

    bn_paths = [p for p, l in walk(model) if l.__class__.__name__ == 'BatchNormalization']
    inner = model.get_layer('patch') if arch == 'nested' else None
    probe_full = weighting == 'balance' and (optim == 'sgd')

    # the training schedule: list of (stage, n_steps); stage setup as do_2stage_training
    stages = []
    if arch == 'flat':
        stages.append({'stage': 1, 'steps': 2, 'lr': LR[optim], 'setup': None})
    else:
        stages.append({'stage': 1, 'steps': 2, 'lr': LR[optim], 'setup': 'stage1'})
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
                                'inside_frozen_model': bool(arch == 'nested' and '/' in p and
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
            if arch == 'flat':
                cands = {'as_built': {k: (L2_DENSE if k.startswith('dense') else L2_CONV)
                                      for k in kernels}}
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
    if arch == 'flat':
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
        'model_h5': 'model.h5: the model before compile, as this Keras saved it (w0 weights)',
        'frozen_before_compile': (
            ['bn_frozen (layer.trainable = False after building; so saved in model.h5)']
            if arch == 'flat' else
            ['input', 'patch (stage 1 only: model.layers[:top_layer_nb])']),
        'nested': None if arch == 'flat' else {
            'top_layer_nb': TOP_LAYER_NB,
            'stage1': 'model.layers[:2] (input, patch) trainable=False; top-level Dense/Conv2D '
                      'kernel_regularizer.l2 = %g; compile; 2 x train_on_batch' % WD1,
            'stage2': 'model.layers[:2] trainable=True; l2 = %g; compile (fresh optimizer) at '
                      'lr * %g; 1 x train_on_batch' % (WD2, ALL_LAYER_MULT),
            'l2_at_build': L2_BUILD, 'weight_decay': WD1, 'weight_decay2': WD2},
        'l2_at_build': ({'conv1': L2_CONV, 'conv2': L2_CONV, 'dense': L2_DENSE} if arch == 'flat'
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
