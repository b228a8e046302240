"""Graph rewrites that keep a Keras model's function but change how a runtime executes it.

``dense_heads_as_convolutions``: a ``Flatten`` followed by a ``Dense`` over an HxWxC
feature map computes exactly what a ``Conv2D`` with an HxW kernel and ``units`` filters
computes (Keras flattens channels-last, so the dense kernel reshapes to (H, W, C, units)
without any transpose). The rewrite matters for INT8 on CPUs without VNNI: OpenVINO runs
a quantized fully-connected layer through oneDNN's generic int8 GEMM, which there is no
faster than f32, while an int8 convolution gets its AVX2 int8 kernel. In f32 the
convolution form is the slower one, so only the INT8 IR is built from the rewritten model.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense layers smaller than this are not worth rewriting: their cost is negligible.
MIN_DENSE_WEIGHTS = 1_000_000


@dataclass(frozen=True)
class Rewrite:
    """One Flatten + Dense pair replaced by a convolution."""

    dense: str
    convolution: str
    kernel: tuple[int, int]
    weights: int


def dense_heads_as_convolutions(model, min_weights: int = MIN_DENSE_WEIGHTS):
    """A copy of a Sequential ``model`` with large Flatten + Dense pairs as convolutions.

    Returns ``(model, rewrites)``; with nothing to rewrite, the model itself and ``[]``.
    Every other layer is cloned from its config with its weights.
    """
    import keras

    layers = list(model.layers)
    plan = [
        i
        for i in range(len(layers) - 1)
        if _is_large_dense_head(layers[i], layers[i + 1], min_weights)
    ]
    if not plan:
        return model, []
    rebuilt, weights, rewrites = [keras.Input(model.input_shape[1:])], [], []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if i in plan:
            dense = layers[i + 1]
            height, width, channels = layer.input.shape[1:]
            convolution = keras.layers.Conv2D(
                dense.units,
                (height, width),
                activation=dense.activation,
                use_bias=dense.use_bias,
                name=f"{dense.name}_as_conv",
            )
            kernel, *bias = dense.get_weights()
            weights.append((convolution, [kernel.reshape(height, width, channels, -1), *bias]))
            rebuilt += [convolution, keras.layers.Flatten(name=layer.name)]
            rewrites.append(
                Rewrite(dense.name, convolution.name, (height, width), int(kernel.size))
            )
            i += 2
            continue
        clone = layer.__class__.from_config(layer.get_config())
        weights.append((clone, layer.get_weights()))
        rebuilt.append(clone)
        i += 1
    rewritten = keras.Sequential(rebuilt, name=model.name)
    for layer, values in weights:
        layer.set_weights(values)
    return rewritten, rewrites


def _is_large_dense_head(flatten, dense, min_weights: int) -> bool:
    import keras

    if not (isinstance(flatten, keras.layers.Flatten) and isinstance(dense, keras.layers.Dense)):
        return False
    shape = flatten.input.shape[1:]
    # A 1x1 map is already a matrix product; anything but HxWxC has no 2-D kernel.
    if len(shape) != 3 or shape[0] * shape[1] == 1:
        return False
    return int(dense.kernel.shape[0]) * int(dense.units) >= min_weights
