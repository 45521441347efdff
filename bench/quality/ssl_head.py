"""A small projection head trained contrastively on frozen VGG16 features, without labels.

The positives are two views of the same photo (stretched or padded, mirrored, another input
size), each pooled by the frozen trunk; every other photo in the batch is a negative
(NT-Xent, as in SimCLR). Inputs are first PCA-whitened on the catalogue, and light feature
noise and dropout make the task less trivial. Only the catalogue's own photos are used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from sklearn.decomposition import PCA

from core.encoder import l2_normalise


def train_head(
    views: Sequence[np.ndarray],
    hidden: int = 512,
    dims: int = 128,
    epochs: int = 150,
    batch_size: int = 256,
    temperature: float = 0.1,
    whiten_dims: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Train on ``views`` (each (N, d), rows are the same photos) and embed ``views[0]``.

    Returns:
        (N, dims) unit vectors of the first view through the trained head.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    pca = PCA(n_components=min(whiten_dims, len(views[0]) - 1), whiten=True, random_state=seed)
    pca.fit(views[0].astype(np.float64))
    inputs = np.stack([pca.transform(v.astype(np.float64)) for v in views]).astype(np.float32)
    count, width = inputs.shape[1], inputs.shape[2]

    init = tf.keras.initializers.GlorotUniform(seed=seed)
    first = tf.Variable(init((width, hidden)))
    first_bias = tf.Variable(tf.zeros(hidden))
    second = tf.Variable(init((hidden, dims)))
    weights = [first, first_bias, second]
    optimiser = tf.keras.optimizers.Adam(1e-3)

    def project(x: tf.Tensor, training: bool) -> tf.Tensor:
        if training:
            x = tf.nn.dropout(x + tf.random.normal(tf.shape(x), stddev=0.3), rate=0.2)
        h = tf.nn.relu(x @ first + first_bias)
        return tf.math.l2_normalize(h @ second, axis=1)

    @tf.function  # type: ignore[untyped-decorator]  # TensorFlow ships no type hints
    def step(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            za, zb = project(a, True), project(b, True)
            logits = za @ tf.transpose(zb) / temperature
            targets = tf.range(tf.shape(a)[0])
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
                + tf.nn.sparse_softmax_cross_entropy_with_logits(targets, tf.transpose(logits))
            )
        optimiser.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
        return loss

    for _ in range(epochs):
        order = rng.permutation(count)
        for start in range(0, count - batch_size // 2, batch_size):
            rows = order[start : start + batch_size]
            pick = rng.integers(0, len(views), size=(2, len(rows)))
            a = inputs[pick[0], rows]
            b = inputs[pick[1], rows]
            step(tf.constant(a), tf.constant(b))
    embedded = project(tf.constant(inputs[0]), False).numpy()
    return l2_normalise(embedded)
