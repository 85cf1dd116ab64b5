"""PyTorch smoke training on the CPU: a linear regression learns y = 3x - 2 and its loss falls.

Proves autograd, an optimizer step and tensor math work, not only that torch imports."""

import json
import sys

import torch

torch.manual_seed(0)
x = torch.randn(256, 1)
y = 3 * x - 2 + 0.01 * torch.randn(256, 1)
model = torch.nn.Linear(1, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
losses = []
for step in range(100):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
weight, bias = model.weight.item(), model.bias.item()
print(json.dumps({"torch": torch.__version__, "first_loss": losses[0], "last_loss": losses[-1],
                  "weight": weight, "bias": bias}))
sys.exit(0 if losses[-1] < 0.01 * losses[0] and abs(weight - 3) < 0.05 and abs(bias + 2) < 0.05 else 1)
