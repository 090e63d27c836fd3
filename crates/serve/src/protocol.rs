//! The KServe v2 (Open Inference Protocol) REST messages that kiln uses.

use serde::{Deserialize, Serialize};

/// `POST /v2/models/{name}/infer` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Optional request id, echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Input tensors: one `[rows, features]` tensor, or one `[rows]` tensor per feature named
    /// after it.
    pub inputs: Vec<InferTensor>,
}

/// A tensor in a request or response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferTensor {
    /// Tensor name.
    pub name: String,
    /// Shape, row-major.
    pub shape: Vec<i64>,
    /// KServe datatype: `FP32`, `FP64`, `INT32`, `INT64`, `BYTES`, ...
    pub datatype: String,
    /// The values, flat in row-major order or nested.
    pub data: serde_json::Value,
}

/// `POST /v2/models/{name}/infer` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// The model that answered.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// The request id, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `label` (BYTES `[rows]`), `class` (INT64 `[rows]`) and `probabilities` (FP32 `[rows, classes]`).
    pub outputs: Vec<InferTensor>,
}

impl InferResponse {
    /// The predicted labels, from the `label` output.
    pub fn labels(&self) -> Vec<String> {
        self.output("label")
            .and_then(|t| t.data.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// The class probabilities per row, from the `probabilities` output.
    pub fn probabilities(&self) -> Vec<Vec<f32>> {
        let Some(t) = self.output("probabilities") else { return Vec::new() };
        let cols = t.shape.get(1).copied().unwrap_or(1).max(1) as usize;
        let flat: Vec<f32> = t
            .data
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).map(|v| v as f32).collect())
            .unwrap_or_default();
        flat.chunks(cols).map(<[f32]>::to_vec).collect()
    }

    /// The output tensor called `name`.
    pub fn output(&self, name: &str) -> Option<&InferTensor> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

/// An error body, `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}
