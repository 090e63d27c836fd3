//! A blocking client for KServe v2 servers.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::protocol::{ErrorBody, InferRequest, InferResponse, InferTensor};
use crate::{Error, Result};

/// A blocking HTTP client for a KServe v2 server (kiln's or another).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client for the server at `base_url` (for example `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(60)))
            .build();
        Self { base: base_url.trim_end_matches('/').to_string(), agent: config.into() }
    }

    /// Predicts `rows` (raw features, one `Vec` per row) with `model`.
    pub fn infer(&self, model: &str, rows: &[Vec<f64>]) -> Result<InferResponse> {
        let width = rows.first().map_or(0, Vec::len);
        let data: Vec<f64> = rows.iter().flatten().copied().collect();
        let request = InferRequest {
            id: None,
            inputs: vec![InferTensor {
                name: "input".into(),
                shape: vec![rows.len() as i64, width as i64],
                datatype: "FP64".into(),
                data: json!(data),
            }],
        };
        self.post(&format!("/v2/models/{model}/infer"), &request)
    }

    /// Whether the server answers `GET /v2/health/ready` with 200.
    pub fn ready(&self) -> Result<bool> {
        let url = format!("{}/v2/health/ready", self.base);
        match self.agent.get(&url).call() {
            Ok(r) => Ok(r.status().is_success()),
            Err(e) => Err(Error::Client { url, message: e.to_string() }),
        }
    }

    /// `GET` a path and parse the JSON answer.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let response =
            self.agent.get(&url).call().map_err(|e| Error::Client { url: url.clone(), message: e.to_string() })?;
        read(url, response)
    }

    /// `POST` a JSON body to a path and parse the JSON answer.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let response = self
            .agent
            .post(&url)
            .send_json(body)
            .map_err(|e| Error::Client { url: url.clone(), message: e.to_string() })?;
        read(url, response)
    }
}

fn read<T: DeserializeOwned>(url: String, mut response: ureq::http::Response<ureq::Body>) -> Result<T> {
    let status = response.status();
    let text =
        response.body_mut().read_to_string().map_err(|e| Error::Client { url: url.clone(), message: e.to_string() })?;
    if !status.is_success() {
        let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
        return Err(Error::Client { url, message: format!("HTTP {}: {message}", status.as_u16()) });
    }
    serde_json::from_str(&text).map_err(|e| Error::Client { url, message: format!("unexpected response: {e}") })
}
