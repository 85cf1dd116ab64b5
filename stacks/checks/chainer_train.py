"""Chainer smoke training (one process): a small MLP learns a synthetic classification task.

Proves more than imports: forward, backward and the optimizer work and the loss falls."""

import json
import sys

import numpy as np

import chainer
import chainer.functions as F
import chainer.links as L

rng = np.random.RandomState(0)
x = rng.randn(512, 8).astype(np.float32)
y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
model = L.Classifier(chainer.Sequential(L.Linear(8, 16), F.relu, L.Linear(16, 2)))
optimizer = chainer.optimizers.Adam(alpha=0.01)
optimizer.setup(model)
losses = []
for epoch in range(40):
    model.cleargrads()
    loss = model(x, y)
    loss.backward()
    optimizer.update()
    losses.append(float(loss.array))
with chainer.using_config("train", False):
    accuracy = float(F.accuracy(model.predictor(x), y).array)
print(json.dumps({"first_loss": losses[0], "last_loss": losses[-1], "accuracy": accuracy}))
sys.exit(0 if losses[-1] < 0.5 * losses[0] and accuracy > 0.9 else 1)
