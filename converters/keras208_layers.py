# Layer-coverage cases for Keras 2.0.8.  Executed inside converters/keras208.py
# (shares its imports, `record`, `case` and `common`); not a module of its own.
from keras.layers import (SeparableConv2D, ZeroPadding2D, Cropping2D, UpSampling2D,  # noqa: E402
                          Reshape, Permute, SpatialDropout2D, LeakyReLU, PReLU, ELU,
                          Conv1D, MaxPooling1D, AveragePooling1D, GlobalAveragePooling1D,
                          GlobalMaxPooling1D, RepeatVector, Concatenate, Lambda)

COV_NOTE = ("Layer-coverage model (Keras 2.0.8 on Theano, random seeded weights). "
            "Theano-oriented kernels; see tfkeras_check for which layers TensorFlow "
            "semantics would compute differently (Theano 'same' padding is symmetric, "
            "TensorFlow puts the extra pixel bottom/right).")


def _finish(case, model, x, notes=(), **kw):
    rng = np.random.RandomState(abs(hash(case)) % 1000)
    common.randomize_model(model, np.random.RandomState(7))
    common.calibrate_bn(keras, model, x, rng)
    return record(case, model, x, [COV_NOTE] + list(notes), **kw)


@case
def k208_conv():
    rng = np.random.RandomState(11)
    inp = Input((11, 10, 3), name='img')
    a = Conv2D(4, (3, 3), strides=2, padding='same', name='conv_s2_same')(inp)
    b = Conv2D(4, (2, 2), padding='same', name='conv_even_same')(inp)
    c = Conv2D(4, (3, 3), dilation_rate=2, padding='valid', name='conv_dil_valid')(inp)
    d = Conv2D(4, (3, 3), dilation_rate=2, padding='same', activation='relu',
               name='conv_dil_same_relu')(inp)
    e = Conv2D(5, (1, 3), padding='valid', use_bias=False, activation='tanh',
               name='conv_nobias_tanh')(inp)
    f = Conv2D(4, (4, 4), strides=(3, 2), padding='same', activation='sigmoid',
               name='conv_s32_same_sigmoid')(inp)
    g0 = Conv2D(3, (5, 5), strides=2, padding='valid', activation='elu', name='conv_5x5_s2_valid')(inp)
    # SeparableConv2D: the Theano backend of Keras 2.0.8 raises NotImplementedError
    # (K.separable_conv2d); it is covered by tfk_functional instead.
    g2 = Conv2D(4, (3, 3), strides=2, padding='valid', use_bias=False, name='conv_s2_valid')(d)
    h = Dense(7, name='dense_4d')(b)
    bn1 = BatchNormalization(center=False, name='bn_nocenter')(a)
    bn2 = BatchNormalization(scale=False, epsilon=0.01, name='bn_noscale_eps')(c)
    bn3 = BatchNormalization(axis=3, epsilon=1e-4,
                             name='bn_axis3_plain')(h)
    feats = [Flatten(name='flat_bn1')(bn1)] + [
        GlobalAveragePooling2D(name='gap_%s' % n)(t) for n, t in
        [('bn2', bn2), ('d', d), ('e', e), ('f', f), ('g0', g0), ('g2', g2), ('bn3', bn3)]]
    out = Concatenate(name='concat_all')(feats)
    model = Model(inp, out, name='conv_cov')
    x = common.make_input(rng, (2, 11, 10, 3))
    _finish('k208_conv', model, x, notes=["SeparableConv2D is not implemented by the Theano "
            "backend of Keras 2.0.8 (NotImplementedError): see tfk_functional"])


@case
def k208_pool_pad():
    rng = np.random.RandomState(12)
    inp = Input((9, 8, 3), name='img')
    zp = ZeroPadding2D(((1, 2), (0, 3)), name='zeropad_asym')(inp)
    cr = Cropping2D(((1, 0), (2, 1)), name='crop_asym')(zp)
    up = UpSampling2D((2, 3), name='upsample_2x3')(cr)
    mp_v = MaxPooling2D((3, 3), strides=2, padding='valid', name='maxpool_3s2_valid')(inp)
    mp_s = MaxPooling2D((3, 3), strides=2, padding='same', name='maxpool_3s2_same')(inp)
    mp_2s = MaxPooling2D((2, 2), padding='same', name='maxpool_2_same')(inp)
    ap_s = AveragePooling2D((2, 2), padding='same', name='avgpool_2_same')(inp)
    ap_3s = AveragePooling2D((3, 3), strides=(2, 2), padding='same', name='avgpool_3s2_same')(inp)
    ap_v = AveragePooling2D((2, 3), strides=(1, 2), padding='valid', name='avgpool_2x3_valid')(up)
    gm = GlobalMaxPooling2D(name='gmp')(inp)
    ga = GlobalAveragePooling2D(name='gap')(up)
    perm = Permute((2, 1, 3), name='permute_hw')(mp_v)
    rs = Reshape((-1, 3), name='reshape')(perm)
    fl = [Flatten(name='flat_%d' % i)(t) for i, t in enumerate([mp_s, mp_2s, ap_s, ap_3s, ap_v, rs])]
    out = Concatenate(name='concat_all')(fl + [gm, ga])
    model = Model(inp, out, name='pool_pad')
    x = common.make_input(rng, (2, 9, 8, 3))
    _finish('k208_pool_pad', model, x)


@case
def k208_merge_act():
    rng = np.random.RandomState(13)
    inp = Input((5, 6, 4), name='img')
    c = Conv2D(4, (3, 3), padding='same', name='conv')(inp)
    acts = [Activation(a, name='act_' + a)(c) for a in (
        'relu', 'softmax', 'sigmoid', 'tanh', 'linear', 'elu', 'selu', 'softplus', 'softsign',
        'hard_sigmoid')]
    lr = LeakyReLU(alpha=0.3, name='leaky')(c)
    pr = PReLU(name='prelu')(c)
    pr2 = PReLU(shared_axes=[1, 2], name='prelu_shared')(c)
    el = ELU(alpha=0.7, name='elu_layer')(c)
    dr = Dropout(0.3, name='dropout')(lr)
    sd = SpatialDropout2D(0.3, name='spatial_dropout')(pr)
    add = KL.add([acts[0], acts[3], dr], name='add3')
    mul = KL.multiply([acts[2], el], name='multiply')
    avg = KL.average([sd, pr2, acts[4]], name='average')
    mx = KL.maximum([acts[5], acts[6]], name='maximum')
    cat = KL.concatenate([add, mul, avg, mx] + acts[1:2] + acts[7:], axis=-1, name='concat_c')
    cat1 = KL.concatenate([add, mul], axis=1, name='concat_h')
    out = KL.concatenate([Flatten(name='flat_c')(cat), Flatten(name='flat_h')(cat1)],
                         name='concat_out')
    model = Model(inp, out, name='merge_act')
    x = common.make_input(rng, (2, 5, 6, 4))
    has_sub = hasattr(KL, 'subtract')
    _finish('k208_merge_act', model, x, notes=[
        "Keras 2.0.8 has no Subtract layer (layers.subtract: %s); Subtract is covered by "
        "tfk_functional" % has_sub])


@case
def k208_seq_1d():
    rng = np.random.RandomState(14)
    model = Sequential(name='seq1d')
    model.add(Conv1D(6, 3, padding='valid', activation='relu', input_shape=(13, 3), name='c1'))
    model.add(MaxPooling1D(2, name='mp1'))
    model.add(Conv1D(5, 2, padding='same', name='c2_even_same'))
    model.add(AveragePooling1D(2, padding='same', name='ap1_same'))
    model.add(Conv1D(4, 3, strides=2, padding='same', dilation_rate=1, name='c3_s2_same'))
    model.add(BatchNormalization(name='bn'))
    model.add(GlobalMaxPooling1D(name='gmp1'))
    model.add(RepeatVector(3, name='repeat'))
    model.add(Conv1D(4, 2, padding='valid', activation='tanh', name='c4'))
    model.add(GlobalAveragePooling1D(name='gap1'))
    model.add(Dense(3, activation='softmax', name='out'))
    x = common.make_input(rng, (2, 13, 3))
    rng2 = np.random.RandomState(5)
    common.randomize_model(model, rng2)
    common.calibrate_bn(keras, model, x, rng2)
    s, _ = common.calibrate_final(model, x, [model.layers[-1]], 3, predict_fn(model))
    record('k208_seq_1d', model, x, [COV_NOTE, "Sequential: Keras 2.0.8 writes its config as a "
                                     "bare list of layers (no name, no InputLayer)",
                                     "final Dense scaled by %g" % s])


@case
def k208_nested_shared():
    rng = np.random.RandomState(15)
    i_in = Input((6, 5, 4), name='inner_in')
    t = Conv2D(3, (3, 3), padding='same', name='inner_conv')(i_in)
    t = BatchNormalization(name='inner_bn')(t)
    t = Activation('relu', name='inner_relu')(t)
    inner = Model(i_in, t, name='inner')
    m_in = Input((6, 5, 4), name='middle_in')
    u = inner(m_in)
    u = Conv2D(4, (1, 1), name='middle_conv')(u)
    u = BatchNormalization(name='middle_bn')(u)
    middle = Model(m_in, u, name='middle')
    inp = Input((6, 5, 3), name='img')
    shared = Conv2D(4, (3, 3), padding='same', name='shared_conv')
    y1 = shared(inp)
    y2 = shared(Conv2D(3, (1, 1), name='pre_conv')(inp))  # second call of the same layer
    z1 = middle(y1)                                       # nested model called twice
    z2 = middle(y2)
    s = KL.add([z1, z2], name='add_branches')
    g = GlobalAveragePooling2D(name='gap')(s)
    out = Dense(3, activation='softmax', name='out')(g)
    model = Model(inp, out, name='outer')
    x = common.make_input(rng, (2, 6, 5, 3))
    rng2 = np.random.RandomState(6)
    common.randomize_model(model, rng2)
    common.calibrate_bn(keras, inner, common.make_input(rng2, (2, 6, 5, 4)), rng2)
    common.calibrate_bn(keras, middle, common.make_input(rng2, (2, 6, 5, 4)), rng2)
    sc, _ = common.calibrate_final(model, x, [model.layers[-1]], 3, predict_fn(model))
    record('k208_nested_shared', model, x, [
        COV_NOTE,
        "outer model contains 'middle' (called twice: node indices 1 and 2 in the config), "
        "which contains 'inner' (nested two deep); 'shared_conv' is one layer called twice. "
        "Per-layer keys: layer/<name> for the first call, layer/<name>#1 for the second; "
        "layer/middle#1/inner/... are the inner layers during middle's second call.",
        "final Dense scaled by %g" % sc])


@case
def k208_channels_first():
    rng = np.random.RandomState(16)
    inp = Input((3, 10, 9), name='img')
    t = Conv2D(4, (3, 3), padding='same', name='conv1')(inp)
    t = BatchNormalization(axis=1, name='bn1')(t)
    t = Activation('relu', name='relu1')(t)
    t = MaxPooling2D((2, 2), name='pool1')(t)
    t = Conv2D(5, (3, 3), strides=2, padding='valid', name='conv2')(t)
    t = AveragePooling2D((2, 1), padding='same', name='pool2')(t)
    t = Flatten(name='flatten')(t)
    out = Dense(3, activation='softmax', name='out')(t)
    model = Model(inp, out, name='cf')
    x = common.make_input(rng, (2, 10, 9, 3)).transpose(0, 3, 1, 2).copy()
    rng2 = np.random.RandomState(8)
    common.randomize_model(model, rng2)
    common.calibrate_bn(keras, model, x, rng2)
    sc, _ = common.calibrate_final(model, x, [model.layers[-1]], 3, predict_fn(model))
    record('k208_channels_first', model, x, [
        COV_NOTE, "image_data_format channels_first (NCHW input, Theano): kernels are still "
        "stored HWIO by Keras 2.0.8; Flatten flattens in C,H,W order", "final Dense scaled by %g" % sc])


@case
def k208_weights_only():
    rng = np.random.RandomState(17)
    inp = Input((8, 7, 3), name='img')
    t = Conv2D(4, (3, 3), padding='same', name='conv1')(inp)
    t = BatchNormalization(name='bn1')(t)
    t = Activation('relu', name='relu1')(t)
    t = GlobalAveragePooling2D(name='gap')(t)
    out = Dense(3, activation='softmax', name='out')(t)
    model = Model(inp, out, name='wo')
    x = common.make_input(rng, (2, 8, 7, 3))
    rng2 = np.random.RandomState(9)
    common.randomize_model(model, rng2)
    common.calibrate_bn(keras, model, x, rng2)
    sc, _ = common.calibrate_final(model, x, [model.layers[-1]], 3, predict_fn(model))
    d = common.case_dir('k208_weights_only')
    model.save_weights(os.path.join(d, 'weights.h5'))
    with open(os.path.join(d, 'model.json'), 'w') as f:
        f.write(model.to_json())
    record('k208_weights_only', model, x, [
        COV_NOTE, "weights-only: weights.h5 from model.save_weights (layer_names, backend, "
        "keras_version at the file root, no model_config) + model.json from model.to_json(); "
        "no model.h5", "final Dense scaled by %g" % sc], save=False)


@case
def hostile_src():
    """Genuine Keras 2.0.8 files for fixtures/hostile: lambda.h5 (saved by Keras with a
    marshalled Lambda), build/hostile_src/lambda2.h5 (two Lambdas; hostile.py adds a custom
    class and an evil module) and build/hostile_src/small.h5 (a small valid model)."""
    hd = common.case_dir('hostile')
    sd = os.path.join(common.BUILD, 'hostile_src')
    os.makedirs(sd, exist_ok=True)
    inp = Input((6, 6, 3), name='img')
    t = Conv2D(2, (3, 3), padding='same', name='conv1')(inp)
    t = Lambda(lambda v: v * 2.0 + 1.0, name='lambda_scale')(t)
    t = GlobalAveragePooling2D(name='gap')(t)
    out = Dense(2, activation='softmax', name='out')(t)
    Model(inp, out).save(os.path.join(hd, 'lambda.h5'))

    def double(v):
        return v * 2.0
    inp = Input((6, 6, 3), name='img')
    t = Conv2D(2, (3, 3), padding='same', name='conv1')(inp)
    t = Lambda(lambda v: v + 1.0, name='lambda_a')(t)
    t = Lambda(double, name='lambda_b')(t)
    t = Conv2D(2, (1, 1), name='to_be_custom')(t)
    t = Conv2D(2, (1, 1), name='to_be_evil')(t)
    t = GlobalAveragePooling2D(name='gap')(t)
    out = Dense(2, activation='softmax', name='out')(t)
    Model(inp, out).save(os.path.join(sd, 'lambda2.h5'))

    inp = Input((6, 6, 3), name='img')
    t = Conv2D(2, (3, 3), padding='same', name='conv1')(inp)
    t = BatchNormalization(name='bn1')(t)
    t = GlobalAveragePooling2D(name='gap')(t)
    out = Dense(2, activation='softmax', name='out')(t)
    m = Model(inp, out)
    common.randomize_model(m, np.random.RandomState(3))
    m.save(os.path.join(sd, 'small.h5'))
    print("wrote", hd + "/lambda.h5", sd)


@case
def k208_layers_1d():
    """1-D shape layers, the inference-identity noise/dropout layers and ThresholdedReLU
    (theta set exactly on a value the input holds, so `>` and `>=` give different numbers)."""
    from keras.layers import (ZeroPadding1D, Cropping1D, UpSampling1D, SpatialDropout1D,
                              GaussianNoise, GaussianDropout, AlphaDropout, ThresholdedReLU)
    rng = np.random.RandomState(18)
    x = common.make_input(rng, (2, 16, 3))
    vals, counts = np.unique(x, return_counts=True)
    # theta: the float32 value the input holds most often in (0.1, 1.5)
    cand = [(-n, abs(float(v) - 0.5), float(v)) for v, n in zip(vals, counts) if 0.1 < v < 1.5]
    theta = min(cand)[2]
    n_eq = int((x == np.float32(theta)).sum())
    inp = Input((16, 3), name='seq')
    t = ThresholdedReLU(theta=theta, name='thresh_on_input_value')(inp)
    c = Conv1D(4, 3, padding='valid', name='conv')(inp)
    g = GaussianNoise(0.5, name='gaussian_noise')(c)
    g = GaussianDropout(0.4, name='gaussian_dropout')(g)
    g = AlphaDropout(0.3, name='alpha_dropout')(g)
    g = SpatialDropout1D(0.3, name='spatial_dropout_1d')(g)
    th = ThresholdedReLU(theta=0.25, name='thresh_0_25')(g)
    z = ZeroPadding1D((2, 1), name='zeropad_asym')(th)
    cr = Cropping1D((1, 3), name='crop_asym')(z)
    up = UpSampling1D(3, name='upsample_3')(cr)
    z2 = ZeroPadding1D(1, name='zeropad_int')(t)
    cr2 = Cropping1D(2, name='crop_int')(z2)
    up2 = UpSampling1D(name='upsample_default')(cr2)
    out = Concatenate(name='concat_all')([Flatten(name='flat_a')(up), Flatten(name='flat_b')(up2)])
    model = Model(inp, out, name='layers_1d')
    _finish('k208_layers_1d', model, x, notes=[
        "ThresholdedReLU 'thresh_on_input_value' has theta = %r, exactly the float32 value of "
        "%d input elements: Keras computes x * (x > theta), so they give 0 (a '>=' would give "
        "theta)" % (theta, n_eq),
        "GaussianNoise, GaussianDropout, AlphaDropout and SpatialDropout1D are identity at "
        "inference (predict): their recorded outputs equal their inputs",
        "no 'same' padding anywhere: Theano and TensorFlow semantics agree on every layer"])
