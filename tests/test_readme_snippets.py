"""The README's Python examples, executed: each block runs as written, on the objects its
prose describes, and the values its comments promise hold."""

from __future__ import annotations

import importlib.util
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README, re.M | re.S)


def _example(module: str):
    spec = importlib.util.spec_from_file_location(module, ROOT / "examples" / f"{module}.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def _block(first_line: str) -> str:
    found = [b for b in BLOCKS if b.lstrip().startswith(first_line)]
    assert len(found) == 1, f"the README has {len(found)} python blocks opening {first_line!r}"
    return found[0]


def test_every_python_block_of_the_readme_is_executed_here():
    openings = ["from dlsummary import receptive_field,", "receptive_field(model, torch.randn",
                "from dlsummary import gradient_flow", "from dlsummary import numerical_gradient",
                "from dlsummary import argmin_layer"]
    assert sorted(b.lstrip().split("\n")[0][:30] for b in BLOCKS) == \
        sorted(o[:30] for o in openings)


def test_receptive_field_example():
    models = _example("my_models")
    torch.manual_seed(0)
    ns = {"model": models.small_resnet_features(), "classifier": models.small_resnet()}
    exec(_block("from dlsummary import receptive_field,"), ns)
    rf, emp = ns["rf"], ns["emp"]
    assert (rf.size, rf.stride, rf.padding) == ((25, 25), (4, 4), (12, 12))
    assert (emp.bbox, emp.size) == (((20, 45), (20, 45)), (25, 25))
    assert ns["receptive_field"](ns["classifier"], (1, 3, 64, 64)).is_global


def test_receptive_field_options_example():
    models, unets = _example("my_models"), _example("unet")
    torch.manual_seed(0)

    def my_activation(t):
        return t * torch.sigmoid(t)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = models.small_resnet_features()

        def forward(self, t):
            return my_activation(self.features(t))

    from dlsummary import receptive_field

    ns = {"torch": torch, "model": Custom(), "unet": unets.unet(), "size": (1, 3, 64, 64),
          "my_activation": my_activation, "receptive_field": receptive_field}
    code = _block("receptive_field(model, torch.randn")
    for line in code.splitlines():
        statement = line.split("#")[0].strip()
        if statement:
            ns["_"] = eval(statement, ns)
    assert receptive_field(unets.unet(), (1, 1, 96, 96)).stride == (1, 1)
    assert receptive_field(Custom(), (1, 3, 64, 64), elementwise=[my_activation]).size == (25, 25)
    assert all(isinstance(s, (int, Fraction)) for s in ns["_"].stride)


def test_gradient_flow_example():
    models = _example("my_models")
    torch.manual_seed(0)
    ns = {"model": models.deep_sigmoid_mlp(depth=8, width=32), "x": torch.randn(64, 32),
          "y": torch.randn(64, 1), "loss_fn": nn.MSELoss()}
    exec(_block("from dlsummary import gradient_flow"), ns)
    flow = ns["flow"]
    assert flow.diagnosis == "vanishing" and "falls" in flow.reason
    assert flow.layers[flow.worst] is not None


class TwoInputs(nn.Module):
    """A classifier of features, or of token ids under a mask: the README uses both."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, inputs, mask=None):
        if inputs.dtype == torch.long:
            inputs = (self.embed(inputs) * mask.unsqueeze(-1)).sum(-2)
        return self.head(inputs)


def test_gradient_check_example():
    torch.manual_seed(0)
    ns = {"f": lambda a, b: (a @ b).sin().sum(), "a": torch.randn(3, 4, dtype=torch.float64),
          "b": torch.randn(4, 2, dtype=torch.float64), "model": TwoInputs(), "nn": nn,
          "x": torch.randn(5, 4), "y": torch.randint(0, 3, (5,)),
          "ids": torch.randint(0, 10, (5, 6)), "mask": (torch.rand(5, 6) > 0.3).float(),
          "loss_fn": nn.CrossEntropyLoss()}
    code = _block("from dlsummary import numerical_gradient")
    lines = code.splitlines()
    results = []
    for line in lines:
        if line.startswith("check_module_gradients("):
            results.append(eval(line.split("  #")[0], ns))
        else:
            exec(line, ns)
    assert ns["report"].passed and len(results) == 3 and all(r.passed for r in results)
    a, b = ns["a"], ns["b"]
    assert torch.allclose(ns["ga"], torch.cos(a @ b) @ b.T, atol=1e-6)


def test_argmin_layer_example():
    torch.manual_seed(0)
    ns = {"torch": torch, "X": torch.randn(20, 4, dtype=torch.float64),
          "y": torch.randn(20, dtype=torch.float64),
          "lam": torch.tensor(0.5, dtype=torch.float64, requires_grad=True)}
    code = _block("from dlsummary import argmin_layer")
    body, last = code.rstrip().rsplit("\n", 1)
    exec(body, ns)
    assert eval(last.split("#")[0], ns) is True
    X, y, lam = ns["X"], ns["y"], ns["lam"].detach()
    closed = torch.linalg.solve(X.T @ X + lam * torch.eye(4, dtype=X.dtype), X.T @ y)
    assert torch.allclose(ns["w"], closed)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
