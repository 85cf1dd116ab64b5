"""ChainerMN smoke test: a tiny MLP trained data-parallel on synthetic data.

Run under `mpiexec -n N`. Proves the communicator has N ranks, the loss falls, and the
parameters are identical on every rank after training. Rank 0 prints one JSON line.
"""

import json
import os
import sys

import numpy as np

import chainer
import chainer.functions as F
import chainer.links as L
import chainermn

if not os.environ.get("CHAINERMN_FORCE_ABORT_ON_EXCEPTION"):  # the image may already install it
    chainermn.global_except_hook.add_hook()
comm = chainermn.create_communicator("naive")

rng = np.random.RandomState(0)
x = rng.randn(512, 8).astype(np.float32)
w_true = rng.randn(8, 1).astype(np.float32)
y = (x @ w_true + 0.01 * rng.randn(512, 1)).astype(np.float32)
dataset = chainer.datasets.TupleDataset(x, y) if comm.rank == 0 else None
dataset = chainermn.scatter_dataset(dataset, comm, shuffle=True, seed=0)

model = L.Linear(8, 1)
if comm.rank != 0:  # different starting points: only the broadcast makes them equal
    for p in model.params():
        p.array[...] = np.random.RandomState(comm.rank).randn(*p.shape)
optimizer = chainermn.create_multi_node_optimizer(chainer.optimizers.SGD(lr=0.05), comm)
optimizer.setup(model)

xs = np.stack([dataset[i][0] for i in range(len(dataset))])
ys = np.stack([dataset[i][1] for i in range(len(dataset))])
losses = []
for epoch in range(30):
    loss = F.mean_squared_error(model(xs), ys)
    model.cleargrads()
    loss.backward()
    optimizer.update()
    losses.append(float(comm.allreduce_obj(float(loss.array))) / comm.size)

flat = np.concatenate([p.array.ravel() for p in model.params()])
gathered = comm.gather_obj(flat.tolist())
if comm.rank == 0:
    equal = all(np.allclose(gathered[0], g, atol=1e-6) for g in gathered)
    result = {"size": comm.size, "examples_per_rank": len(dataset), "first_loss": losses[0],
              "last_loss": losses[-1], "params_equal": bool(equal)}
    print(json.dumps(result))
    ok = comm.size >= 2 and equal and losses[-1] < 0.5 * losses[0]
    sys.exit(0 if ok else 1)
