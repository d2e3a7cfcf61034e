"""Model factories for `qjc dump/explain/compile examples.models:FUNCTION` (run from the repo root).

Each returns (nn.Module, example_inputs) or (nn.Module, example_inputs, dynamic_shapes).
"""

import torch


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.mean(dim=(2, 3)))


def tiny_cnn():
    batch = torch.export.Dim("batch", min=1, max=64)
    return TinyCNN().eval(), (torch.randn(2, 3, 32, 32),), ({0: batch},)


def mlp():
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
    return model, (torch.randn(4, 16),)
