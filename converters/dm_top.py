"""end2end-all-conv dm_resnet.add_top_layers and its helpers (lishen/end2end-all-conv
HEAD 58401e2, dm_resnet.py), copied statement for statement so that genuine Keras creates
the same layers in the same order (and so gives them the same auto-names).

Importing this module has no side effects: it imports no Keras. The layer classes come
from `bind(ns)`, called once before use with a namespace (dict) holding Input, Conv2D,
BatchNormalization, Activation, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
Dense, Dropout, Flatten, Model, KL (with KL.add), l2 and CHANNEL_AXIS:
- keras208.py binds its Keras 2.0.8 names (and re-exports these functions);
- tfkeras.py executes keras208.py's architecture section with tf-keras names, which binds
  those instead;
- rehead_ref.py calls `bind_keras()` (the installed standalone Keras, 2.0.8).

Differences from dm_resnet.py, none of which changes the layers built:
- returns (model, top_layer_nb, final_dense_layers, heatmap_dense_layer) instead of
  (model, top_layer_nb): the generators need the layers to calibrate/skip;
- `return_heatmap` is left out (in dm_resnet.py that path references an undefined `x`:
  `activations.softmax(x, axis=CHANNEL_AXIS)` raises NameError, so it never worked);
- `xrange` -> `range`, `units /= 2` (Python 2 integer division) -> `units //= 2`;
- the channel count of a tensor is read with `_channels` (`_keras_shape` in Keras 2.0.8,
  `.shape` in tf-keras) where dm_resnet.py reads `residual._keras_shape[CHANNEL_AXIS]`.
"""

_NAMES = ("Input", "Conv2D", "BatchNormalization", "Activation", "MaxPooling2D",
          "AveragePooling2D", "GlobalAveragePooling2D", "Dense", "Dropout", "Flatten",
          "Model", "KL", "l2", "CHANNEL_AXIS")


def bind(ns):
    """Use the layer classes of namespace `ns` (a dict, e.g. a module's globals())."""
    missing = [n for n in _NAMES if n not in ns]
    if missing:
        raise KeyError("dm_top.bind: namespace lacks %s" % ", ".join(missing))
    globals().update({n: ns[n] for n in _NAMES})


def bind_keras():
    """Bind the installed standalone Keras (2.0.8: call common.setup_env first)."""
    from keras import backend as K
    from keras import layers as KL_
    from keras.layers import (Input as I_, Conv2D as C_, BatchNormalization as B_,
                              Activation as A_, MaxPooling2D as M_, AveragePooling2D as AP_,
                              GlobalAveragePooling2D as G_, Dense as D_, Dropout as DO_,
                              Flatten as F_)
    from keras.models import Model as MD_
    from keras.regularizers import l2 as l2_
    bind(dict(Input=I_, Conv2D=C_, BatchNormalization=B_, Activation=A_, MaxPooling2D=M_,
              AveragePooling2D=AP_, GlobalAveragePooling2D=G_, Dense=D_, Dropout=DO_,
              Flatten=F_, Model=MD_, KL=KL_, l2=l2_,
              CHANNEL_AXIS=3 if K.image_data_format() == "channels_last" else 1))


def _channels(t):
    s = getattr(t, "_keras_shape", None)
    if s is not None:
        return s[CHANNEL_AXIS]
    return int(t.shape[CHANNEL_AXIS])


# Helper to build a conv -> BN -> relu block
def _conv_bn_relu(nb_filter, nb_row, nb_col, strides=(1, 1), weight_decay=.0001,
                  dropout=.0, last_block=False):
    def f(input):
        conv = Conv2D(filters=nb_filter, kernel_size=(nb_row, nb_col), strides=strides,
                      kernel_initializer="he_normal", padding="same",
                      kernel_regularizer=l2(weight_decay))(input)
        norm = BatchNormalization(axis=CHANNEL_AXIS)(conv)
        if last_block:
            return norm
        relu = Activation("relu")(norm)
        return Dropout(dropout)(relu)
    return f


# Adds a shortcut between input and residual block and merges them with "sum"
def _shortcut(input, residual, weight_decay=.0001, dropout=.0, identity=True,
              strides=(1, 1), with_bn=False, org=False):
    shortcut = input
    if not identity:
        shortcut = Conv2D(filters=_channels(residual), kernel_size=(1, 1),
                          strides=strides, kernel_initializer="he_normal", padding="valid",
                          kernel_regularizer=l2(weight_decay))(input)
        if with_bn:
            shortcut = BatchNormalization(axis=CHANNEL_AXIS)(shortcut)
    addition = KL.add([shortcut, residual])
    if not org:
        return addition
    relu = Activation("relu")(addition)
    return Dropout(dropout)(relu)


# Builds a residual block with repeating bottleneck blocks.
def _residual_block(block_function, nb_filters, repetitions, is_first_layer=False,
                    shortcut_with_bn=False, bottleneck_enlarge_factor=4, **kw_args):
    def f(input):
        for i in range(repetitions):
            init_strides = (1, 1)
            identity = True
            if i == 0 and not is_first_layer:
                init_strides = (2, 2)
            if i == 0:
                identity = False
            input = block_function(nb_filters=nb_filters, init_strides=init_strides,
                                   identity=identity, shortcut_with_bn=shortcut_with_bn,
                                   enlarge_factor=bottleneck_enlarge_factor, **kw_args)(input)
        return input
    return f


def bottleneck_org(nb_filters, init_strides=(1, 1), identity=True, shortcut_with_bn=False,
                   enlarge_factor=4, **kw_args):
    def f(input):
        conv_1_1 = _conv_bn_relu(nb_filters, 1, 1, strides=init_strides, **kw_args)(input)
        conv_3_3 = _conv_bn_relu(nb_filters, 3, 3, **kw_args)(conv_1_1)
        residual = _conv_bn_relu(nb_filters * enlarge_factor, 1, 1, last_block=True,
                                 **kw_args)(conv_3_3)
        return _shortcut(input, residual, identity=identity, strides=init_strides,
                         with_bn=shortcut_with_bn, org=True, **kw_args)
    return f


def _vgg_block(nb_filters, repetitions, dropout=.0, weight_decay=.01):
    def f(input):
        for i in range(repetitions):
            input = Conv2D(nb_filters, (3, 3), padding='same', kernel_initializer="he_normal",
                           kernel_regularizer=l2(weight_decay))(input)
            input = BatchNormalization()(input)
            input = Activation('relu')(input)
            input = Dropout(dropout)(input)
        input = MaxPooling2D((2, 2), strides=(2, 2))(input)
        return input
    return f


def add_top_layers(model, image_size, patch_net='resnet50', block_type='resnet',
                   depths=[512, 512], repetitions=[1, 1], block_fn=bottleneck_org, nb_class=2,
                   shortcut_with_bn=True, bottleneck_enlarge_factor=4, dropout=.0,
                   weight_decay=.0001, add_heatmap=False, avg_pool_size=(7, 7),
                   add_conv=True, add_shortcut=False, hm_strides=(1, 1), hm_pool_size=(5, 5),
                   fc_init_units=64, fc_layers=2):
    """Returns (model, top_layer_nb, final_dense_layers, heatmap_dense_layer)."""
    final = []

    def add_residual_blocks(block):
        for depth, repetition in zip(depths, repetitions):
            block = _residual_block(block_fn, depth, repetition, dropout=dropout,
                                    weight_decay=weight_decay, shortcut_with_bn=shortcut_with_bn,
                                    bottleneck_enlarge_factor=bottleneck_enlarge_factor)(block)
        pool = GlobalAveragePooling2D()(block)
        return Dropout(dropout)(pool)

    def add_vgg_blocks(block):
        for depth, repetition in zip(depths, repetitions):
            block = _vgg_block(depth, repetition, dropout=dropout,
                               weight_decay=weight_decay)(block)
        pool = GlobalAveragePooling2D()(block)
        return Dropout(dropout)(pool)

    def add_fc_layers(block):
        flattened = Flatten()(block)
        dropped = Dropout(dropout)(flattened)
        units = fc_init_units
        for i in range(fc_layers):
            fc = Dense(units, kernel_initializer="he_normal",
                       kernel_regularizer=l2(weight_decay))(dropped)
            norm = BatchNormalization()(fc)
            relu = Activation('relu')(norm)
            dropped = Dropout(dropout)(relu)
            units //= 2  # python 2 integer division in the original
        return dropped, flattened

    if patch_net == 'resnet50':
        last_kept_layer = model.layers[-5]
    elif patch_net == 'yaroslav':
        last_kept_layer = model.layers[-3]
    else:
        last_kept_layer = model.layers[-4]
    block = last_kept_layer.output
    channels = 1 if patch_net == 'yaroslav' else 3
    image_input = Input(shape=(image_size[0], image_size[1], channels))
    model0 = Model(inputs=model.inputs, outputs=block)
    block = model0(image_input)
    hm_layer = None
    if add_heatmap:
        pool1 = AveragePooling2D(pool_size=avg_pool_size, strides=hm_strides)(block)
        dropped = Dropout(dropout)(pool1)
        clf_layer = model.layers[-1]
        clf_weights = clf_layer.get_weights()
        clf_classes = clf_layer.output_shape[1]
        heatmap_layer = Dense(clf_classes, activation='relu', kernel_regularizer=l2(weight_decay))
        heatmap = heatmap_layer(dropped)
        heatmap_layer.set_weights(clf_weights)
        hm_layer = heatmap_layer
        block = MaxPooling2D(pool_size=hm_pool_size)(heatmap)
        top_layer_nb = 8
    else:
        top_layer_nb = 2
    if add_conv:
        if block_type == 'resnet':
            block = add_residual_blocks(block)
        elif block_type == 'vgg':
            block = add_vgg_blocks(block)
        else:
            raise Exception('Unsupported block type: ' + block_type)
    else:
        block, flattened = add_fc_layers(block)
    if add_shortcut and not add_conv:
        d1 = Dense(nb_class, kernel_initializer="he_normal", kernel_regularizer=l2(weight_decay))
        dense = d1(block)
        d2 = Dense(nb_class, kernel_initializer="he_normal", kernel_regularizer=l2(weight_decay))
        shortcut = d2(flattened)
        addition = KL.add([dense, shortcut])
        dense = Activation('softmax')(addition)
        final = [d1, d2]
    else:
        d = Dense(nb_class, kernel_initializer="he_normal", activation='softmax',
                  kernel_regularizer=l2(weight_decay))
        dense = d(block)
        final = [d]
    return Model(inputs=image_input, outputs=dense), top_layer_nb, final, hm_layer
