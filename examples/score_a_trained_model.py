"""Score the samples of a model you already trained: ``input_curvature`` on a plain nn.Module, no Lightning.

A tiny MLP fits gaussian blobs in which 5 % of the labels are flipped; it has to memorize those, and they come
out with the highest curvature. Runs in seconds on CPU.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from curvature_callback import input_curvature

torch.manual_seed(0)
n, dim, classes = 600, 10, 4
y = torch.arange(n) % classes
x = 3 * torch.randn(classes, dim)[y] + torch.randn(n, dim)
flipped = torch.randperm(n)[: n // 20]
y[flipped] = (y[flipped] + torch.randint(1, classes, (len(flipped),))) % classes  # another label

# smooth activations: with ReLU, kinks dominate the finite difference of small models (docs/DESIGN.md §1)
model = nn.Sequential(nn.Linear(dim, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, classes))
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(300):  # full batch
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()

# Score in batches; `indices` (dataset positions) fix each sample's random vectors, so the scores do not
# depend on how the data is batched.
loader = DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=100)
scores = torch.cat([input_curvature(model, xb, yb, indices=ib) for xb, yb, ib in loader])
percentile = scores.argsort().argsort() / (n - 1)  # 0 = flattest sample, 1 = most curved
top = scores.topk(len(flipped)).indices
hits = int(torch.isin(top, flipped).sum())
print(f"train accuracy {(model(x).argmax(1) == y).float().mean():.2f}; mean percentile of the flipped "
      f"samples {percentile[flipped].mean():.2f}; {hits} of the top {len(top)} are flipped")
assert percentile[flipped].mean() > 0.8, "flipped labels should rank high"
once = input_curvature(model, x, y)  # indices default to arange(n): the same vectors as above
assert torch.allclose(scores, once, rtol=1e-3, atol=1e-3 * float(scores.mean())), "scores depend on batching"
