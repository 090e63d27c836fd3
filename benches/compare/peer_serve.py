"""The serving peer: FastAPI + uvicorn + PyTorch answering the same KServe v2 requests as
kiln-serve, with the same model. It reads the kiln package named by KILN_COMPARE_PACKAGE: the
scaler from the manifest and the MLP's weights from `weights.safetensors`, which kiln writes
with PyTorch's parameter names and layouts, so `load_state_dict` takes it as it is. Both
servers therefore give the same answers; harness.py checks that before it measures.

    KILN_COMPARE_PACKAGE=DIR uvicorn peer_serve:app --workers 2
"""

import json
import os
from typing import Optional, Union

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from safetensors.torch import load_file
from torch import nn

torch.set_num_threads(1)  # one per uvicorn worker process


class Mlp(nn.Module):
    """kiln's MLP (`ModelConfig::mlp`): linear layers with ReLU between them, under kiln's
    parameter names."""

    def __init__(self, inputs, hidden, classes):
        super().__init__()
        widths = [inputs] + hidden
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.output = nn.Linear(widths[-1], classes)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.output(x)


def load(dir_):
    with open(os.path.join(dir_, "kiln-package.json")) as f:
        manifest = json.load(f)
    if manifest["format_version"] < 3:
        raise SystemExit(f"{dir_}: format {manifest['format_version']} package; this peer reads safetensors weights (format 3)")
    if manifest.get("task", {"kind": "classification"})["kind"] != "classification":
        raise SystemExit(f"{dir_}: a {manifest['task']['kind']} package; this peer serves classifiers")
    config = manifest["model"]
    model = Mlp(config["inputs"], config["hidden"], config["classes"])
    model.load_state_dict(load_file(os.path.join(dir_, "weights.safetensors")), strict=True)
    model.eval()
    scaler = manifest["scaler"]
    mean = torch.tensor(scaler["mean"], dtype=torch.float64)
    scale = torch.tensor(scaler["scale"], dtype=torch.float64)
    return manifest["name"], model, mean, scale, manifest["labels"]["classes"]


NAME, MODEL, MEAN, SCALE, LABELS = load(os.environ["KILN_COMPARE_PACKAGE"])
app = FastAPI()


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Union[float, list[float]]]


class InferRequest(BaseModel):
    id: Optional[str] = None
    inputs: list[Tensor]


@app.get("/v2/health/ready")
def ready():
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
def infer(name: str, request: InferRequest):
    if name != NAME:
        raise HTTPException(404, f"no model {name!r}")
    tensor = request.inputs[0]
    rows, width = tensor.shape
    if width != len(MEAN):
        raise HTTPException(400, f"expected {len(MEAN)} features, got {width}")
    x = torch.tensor(tensor.data, dtype=torch.float64).reshape(rows, width)
    if not torch.isfinite(x).all():
        raise HTTPException(400, "non-finite input")
    with torch.no_grad():
        probs = torch.softmax(MODEL(((x - MEAN) / SCALE).float()), dim=1)
    classes = probs.argmax(dim=1).tolist()
    return {
        "model_name": NAME,
        "model_version": "1",
        "id": request.id,
        "outputs": [
            {"name": "label", "shape": [rows], "datatype": "BYTES", "data": [LABELS[c] for c in classes]},
            {"name": "class", "shape": [rows], "datatype": "INT64", "data": classes},
            {"name": "probabilities", "shape": [rows, len(LABELS)], "datatype": "FP32", "data": probs.flatten().tolist()},
        ],
    }
