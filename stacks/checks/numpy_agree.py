"""Chainer, PyTorch and TensorFlow agree on NumPy: each, in a fresh interpreter, turns a NumPy array
into its own tensor and back, and reports the version of the NumPy the result belongs to.

The round trip goes through each framework's C extension, so a framework built against an
incompatible NumPy ABI fails here rather than in a user's notebook."""

import json
import subprocess
import sys

ROUND_TRIP = {
    "chainer": "import chainer, numpy as np; a = np.arange(6.0).reshape(2, 3);"
               " out = (chainer.Variable(a) * 2).array",
    "torch": "import torch, numpy as np; a = np.arange(6.0).reshape(2, 3); out = (torch.from_numpy(a) * 2).numpy()",
    "tensorflow": "import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'; import tensorflow as tf, numpy as np;"
                  " a = np.arange(6.0).reshape(2, 3); out = (tf.constant(a) * 2).numpy()",
}
REPORT = ("; import sys; assert out.tolist() == [[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]], out;"
          " print(sys.modules[type(out).__module__.split('.')[0]].__version__)")

seen = {}
for name, code in ROUND_TRIP.items():
    proc = subprocess.run([sys.executable, "-c", code + REPORT], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        print(f"{name}: round trip failed: {proc.stderr.strip()[-600:]}")
        sys.exit(1)
    seen[name] = proc.stdout.strip().splitlines()[-1]
print(json.dumps(seen))
versions = set(seen.values())
if len(versions) != 1:
    sys.exit(1)
print(f"numpy {versions.pop()} for all three")
