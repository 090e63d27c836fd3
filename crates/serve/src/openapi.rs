//! The OpenAPI document of kiln-serve's routes, served at `/openapi.json`.

use serde_json::{Value, json};

/// Every route: method, path, summary. The router is built from the same paths, and a test
/// calls each documented route on a live server.
pub(crate) const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/v2", "Server metadata: name, version, loaded models."),
    ("get", "/v2/health/live", "Liveness: 200 while the process serves."),
    ("get", "/v2/health/ready", "Readiness: 200 once every model is loaded."),
    (
        "get",
        "/v2/models/{name}",
        "Model metadata: inputs, outputs, labels, metrics, lineage, batching, served versions.",
    ),
    ("get", "/v2/models/{name}/versions/{version}", "Metadata of one version (404 unless it is served)."),
    ("get", "/v2/models/{name}/ready", "200 if the model is loaded, 404 otherwise."),
    (
        "post",
        "/v2/models/{name}/infer",
        "Predict: KServe v2 inference request in, label/class/probabilities out; routed to the primary or the canary.",
    ),
    (
        "post",
        "/v2/models/{name}/versions/{version}/infer",
        "Predict with one served version (primary, canary or shadow); 404 otherwise.",
    ),
    (
        "post",
        "/v2/models/{name}/feedback",
        "The true label(s) of an answered request, by its id: joined to the answer, counted in online accuracy, stored.",
    ),
    (
        "get",
        "/v2/models/{name}/monitor",
        "Drift of the latest inputs against the package's reference profile, and online accuracy against the evaluated accuracy.",
    ),
    ("get", "/metrics", "Prometheus metrics."),
    ("get", "/openapi.json", "This document."),
    (
        "get",
        "/admin/models/{name}",
        "Deployment status: primary, canary, shadow, per-version windows, online accuracy, events.",
    ),
    ("post", "/admin/models/{name}/canary", "Start a canary (or change its share): {version, percent[, path]}."),
    ("delete", "/admin/models/{name}/canary", "Stop the canary."),
    ("post", "/admin/models/{name}/shadow", "Start a shadow: {version[, path]}."),
    ("delete", "/admin/models/{name}/shadow", "Stop the shadow."),
    (
        "post",
        "/admin/models/{name}/promote",
        "Make the canary (else the shadow) the primary; moves the registry's production alias.",
    ),
    ("post", "/admin/models/{name}/rollback", "Stop the canary, else restore the primary before the last promotion."),
];

/// The document.
pub(crate) fn document() -> Value {
    let error = json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in ROUTES {
        let mut parameters = Vec::new();
        for p in ["name", "version"] {
            if path.contains(&format!("{{{p}}}")) {
                parameters.push(json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}));
            }
        }
        let infer = path.ends_with("/infer");
        let admin = path.starts_with("/admin/");
        if infer {
            parameters.push(json!({"name": crate::TIMEOUT_HEADER, "in": "header", "required": false,
                "schema": {"type": "integer", "minimum": 0},
                "description": "Deadline in milliseconds (default: the model's batching default_timeout)."}));
        }
        if infer && !path.contains("{version}") {
            parameters.push(json!({"name": crate::deploy::ROUTE_KEY_HEADER, "in": "header", "required": false,
                "schema": {"type": "string"},
                "description": "Routing key for the canary split (default: the request id)."}));
        }
        let mut op = json!({
            "summary": summary,
            "parameters": parameters,
            "responses": {"200": {"description": "OK"}, "404": error},
        });
        let body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        if infer {
            op["requestBody"] = body("InferRequest");
            op["responses"] = json!({
                "200": {"description": "Predictions; header kiln-role says which version answered (primary, canary, direct)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}}}},
                "400": error, "404": error,
                "413": {"description": "Request body larger than the server's limit"},
                "503": {"description": "Queue full; retry after the Retry-After header", "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                "504": error,
            });
        } else if path.ends_with("/feedback") {
            op["requestBody"] = body("Feedback");
            op["responses"] = json!({"200": {"description": "Joined (or stored unjoined)"}, "400": error, "404": error, "409": error});
        } else if admin {
            op["security"] = json!([{"bearer": []}]);
            if (path.ends_with("/canary") || path.ends_with("/shadow")) && *method == "post" {
                op["requestBody"] = body("VersionRequest");
            }
            op["responses"] = json!({"200": {"description": "The deployment status after the change"},
                "400": error, "401": error, "403": error, "404": error, "409": error});
        }
        let entry = paths.entry((*path).to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    let tensor = json!({"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]},
        "data": {"description": "Values, flat in row-major order or nested; null is a missing value"},
    }});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "kiln-serve", "version": env!("CARGO_PKG_VERSION"),
            "description": "KServe v2 (Open Inference Protocol) REST API of kiln-serve."},
        "paths": paths,
        "components": {"schemas": {
            "Tensor": tensor,
            "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string"},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
            }},
            "InferResponse": {"type": "object", "properties": {
                "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
            }},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "Feedback": {"type": "object", "required": ["id"], "properties": {
                "id": {"type": "string", "description": "The id echoed in the inference answer"},
                "label": {"type": "string", "description": "The label of row `row` (default 0)"},
                "row": {"type": "integer", "minimum": 0},
                "labels": {"type": "array", "items": {"type": "string"}, "description": "One label per row"},
            }},
            "VersionRequest": {"type": "object", "required": ["version"], "properties": {
                "version": {"type": "string", "description": "Registry version or alias (or the version name with `path`)"},
                "percent": {"type": "number", "minimum": 0, "maximum": 100},
                "path": {"type": "string", "description": "A package directory to load instead of the registry"},
            }},
        }, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    })
}
