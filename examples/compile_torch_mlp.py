"""Compile a small PyTorch model with qjc and compare it with PyTorch."""

import numpy as np
import torch

import qjc

model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).eval()
x = torch.randn(4, 32)

engine = qjc.compile(model, (x,), target="npu_stub", out_dir="mlp.qjc")  # writes an artifact
got = engine(x.numpy())
with torch.no_grad():
    want = model(x).numpy()
print("max |qjc - torch| =", float(np.max(np.abs(got - want))))
print("reloaded:", qjc.load("mlp.qjc")(x.numpy()).shape)
