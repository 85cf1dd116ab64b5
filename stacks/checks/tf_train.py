"""TensorFlow smoke training on the CPU: a tf.keras model fits random data and its loss falls.

Proves Keras 3 on the TensorFlow backend compiles, fits and predicts, not only that it imports."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(512, 8)).astype(np.float32)
y = (x @ rng.normal(size=(8, 1))).astype(np.float32)
model = tf.keras.Sequential([tf.keras.Input(shape=(8,)), tf.keras.layers.Dense(16, activation="relu"),
                             tf.keras.layers.Dense(1)])
model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="mse")
history = model.fit(x, y, epochs=30, batch_size=64, verbose=0)
losses = history.history["loss"]
prediction = model.predict(x[:4], verbose=0)
print(json.dumps({"tensorflow": tf.__version__, "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__")
                  else "", "first_loss": losses[0], "last_loss": losses[-1], "prediction_shape": prediction.shape}))
sys.exit(0 if losses[-1] < 0.2 * losses[0] and prediction.shape == (4, 1) else 1)
