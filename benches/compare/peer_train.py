"""PyTorch's side of the training case: the same shapes, initialisation scheme (PyTorch's
default, Kaiming-uniform, which kiln's `ModelConfig::init` copies), optimiser (Adam, lr 1e-3,
weight decay 1e-4), batch size and epochs as `compare train`, on the same files, with 2 threads.
Only the training loop is timed; test accuracy is measured after, outside the clock."""

import json
import os
import time

import numpy as np
import torch
from torch import nn


def read(dir_, prefix):
    y = np.fromfile(os.path.join(dir_, f"{prefix}y.u8"), dtype=np.uint8).astype(np.int64)
    x = np.fromfile(os.path.join(dir_, f"{prefix}x.f32"), dtype="<f4").reshape(len(y), 64)
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


class Cnn(nn.Module):
    """kiln's CNN for 8×8×1 digits: two 3×3 same-padded convolutions (16, 32 filters), each
    with ReLU and a 2×2 max pool, flattened, a 64-wide dense layer, 10 logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x.reshape(-1, 8, 8, 1).permute(0, 3, 1, 2)))


def model_for(kind):
    if kind == "mlp256":
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)), 64
    if kind == "mlp512":
        return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)), 256
    if kind == "cnn":
        return Cnn(), 64
    raise SystemExit(f"kind must be mlp256, mlp512 or cnn, not {kind!r}")


def train(kind, data, epochs):
    torch.set_num_threads(2)
    torch.manual_seed(42)
    x, y = read(data, "")
    tx, ty = read(data, "test-")
    model, batch = model_for(kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for i in range(0, len(y), batch):
            idx = order[i : i + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            if not torch.isfinite(loss):  # the same NaN guard kiln's loop has (one readback per step)
                raise SystemExit("loss is not finite")
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accuracy = float((model(tx).argmax(1) == ty).float().mean())
    samples = len(y) * epochs
    params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "samples_per_s": samples / seconds,
                "info": {"test_accuracy": accuracy},
                "check": {"samples": samples, "parameters": params, "learned": accuracy >= 0.8},
            }
        )
    )
