//! Request tensors to model inputs: numeric rows or records (for text features).

use std::collections::HashMap;

use kiln_data::pipeline::Value;
use ndarray::Array2;

use crate::protocol::{InferRequest, InferTensor};

/// Raw rows of one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    /// `rows × features` numbers in feature order (NaN: missing).
    Rows(Array2<f64>),
    /// Column → value, for models with text features.
    Records(Vec<HashMap<String, Value>>),
}

impl Input {
    /// Number of rows.
    pub(crate) fn rows(&self) -> usize {
        match self {
            Self::Rows(r) => r.nrows(),
            Self::Records(r) => r.len(),
        }
    }
}

/// What the model takes: features in order, and which of them are text.
pub(crate) struct Signature<'a> {
    pub features: &'a [String],
    pub text: &'a [bool],
}

const FLOATS: [&str; 3] = ["FP16", "FP32", "FP64"];
const INTS: [&str; 8] = ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"];

/// One decoded tensor: its values in row-major order.
enum Values {
    Numbers(Vec<f64>),
    Text(Vec<Option<String>>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Self::Numbers(v) => v.len(),
            Self::Text(v) => v.len(),
        }
    }
}

fn flatten<'v>(value: &'v serde_json::Value, out: &mut Vec<&'v serde_json::Value>) {
    match value {
        serde_json::Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

fn decode(t: &InferTensor) -> Result<Values, String> {
    let name = &t.name;
    if let Some(d) = t.shape.iter().find(|d| **d < 0) {
        return Err(format!("input `{name}`: shape {:?} has a negative dimension {d}", t.shape));
    }
    let Some(expected) = t.shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d as u64)) else {
        return Err(format!("input `{name}`: shape {:?} is too large", t.shape));
    };
    let mut cells = Vec::new();
    flatten(&t.data, &mut cells);
    if cells.len() as u64 != expected {
        return Err(format!("input `{name}`: shape {:?} needs {expected} values, got {}", t.shape, cells.len()));
    }
    let datatype = t.datatype.as_str();
    let at = |i: usize| format!("input `{name}` ({datatype}), value {i}");
    if FLOATS.contains(&datatype) || INTS.contains(&datatype) {
        let integer = INTS.contains(&datatype);
        let mut out = Vec::with_capacity(cells.len());
        for (i, cell) in cells.iter().enumerate() {
            let v = match cell {
                serde_json::Value::Null => f64::NAN,
                serde_json::Value::Number(n) => {
                    let v = n.as_f64().ok_or_else(|| format!("{}: {n} is not representable", at(i)))?;
                    if integer && v.fract() != 0.0 {
                        return Err(format!("{}: {v} is not an integer", at(i)));
                    }
                    v
                }
                other => return Err(format!("{}: expected a number or null, found {other}", at(i))),
            };
            out.push(v);
        }
        Ok(Values::Numbers(out))
    } else if datatype == "BOOL" {
        cells
            .iter()
            .enumerate()
            .map(|(i, cell)| match cell {
                serde_json::Value::Bool(b) => Ok(f64::from(u8::from(*b))),
                serde_json::Value::Null => Ok(f64::NAN),
                other => Err(format!("{}: expected true, false or null, found {other}", at(i))),
            })
            .collect::<Result<_, _>>()
            .map(Values::Numbers)
    } else if datatype == "BYTES" {
        cells
            .iter()
            .enumerate()
            .map(|(i, cell)| match cell {
                serde_json::Value::String(s) => Ok(Some(s.clone())),
                serde_json::Value::Null => Ok(None),
                other => Err(format!("{}: expected a string or null, found {other}", at(i))),
            })
            .collect::<Result<_, _>>()
            .map(Values::Text)
    } else {
        Err(format!(
            "input `{name}`: datatype {datatype:?} is not supported (FP16/32/64, INT8..64, UINT8..64, BOOL, BYTES)"
        ))
    }
}

/// Turns a request's tensors into rows: one tensor `[rows, features]` (or `[features]` for one
/// row), or one `[rows]` (or `[rows, 1]`) tensor per feature, named after it. Text features
/// need the per-feature form with `BYTES` tensors; a model with text features gets records.
pub(crate) fn parse(request: &InferRequest, model: &Signature<'_>) -> Result<Input, String> {
    let features = model.features;
    let has_text = model.text.iter().any(|t| *t);
    match request.inputs.as_slice() {
        [] => Err("the request has no inputs".into()),
        [t] if !(features.len() == 1 && t.name == features[0]) => {
            if has_text {
                let text: Vec<&str> =
                    features.iter().zip(model.text).filter(|(_, t)| **t).map(|(f, _)| f.as_str()).collect();
                return Err(format!(
                    "input `{}`: this model has text features ({}); send one tensor per feature, BYTES for text",
                    t.name,
                    text.join(", ")
                ));
            }
            let Values::Numbers(values) = decode(t)? else {
                return Err(format!("input `{}`: a [rows, features] tensor must be numeric", t.name));
            };
            let (rows, cols) = match t.shape.as_slice() {
                [r, c] => (*r as usize, *c as usize),
                [c] => (1, *c as usize),
                other => {
                    return Err(format!(
                        "input `{}`: expected shape [rows, {}], got {other:?}",
                        t.name,
                        features.len()
                    ));
                }
            };
            if cols != features.len() {
                return Err(format!(
                    "input `{}`: the model takes {} features per row, the shape says {cols}",
                    t.name,
                    features.len()
                ));
            }
            Array2::from_shape_vec((rows, cols), values).map(Input::Rows).map_err(|e| e.to_string())
        }
        tensors => {
            let mut columns: Vec<Option<Values>> = features.iter().map(|_| None).collect();
            for t in tensors {
                let j = features.iter().position(|f| *f == t.name).ok_or_else(|| {
                    format!(
                        "input `{}` is not a feature of this model (expected one [rows, {}] tensor or one tensor per feature: {})",
                        t.name,
                        features.len(),
                        features.join(", ")
                    )
                })?;
                if columns[j].is_some() {
                    return Err(format!("input `{}` is given twice", t.name));
                }
                if !matches!(t.shape.as_slice(), [_] | [_, 1]) {
                    return Err(format!(
                        "input `{}`: a per-feature tensor has shape [rows], got {:?}",
                        t.name, t.shape
                    ));
                }
                let values = decode(t)?;
                match (&values, model.text[j]) {
                    (Values::Text(_), false) => {
                        return Err(format!("input `{}`: the feature is numeric, got {}", t.name, t.datatype));
                    }
                    (Values::Numbers(_), true) => {
                        return Err(format!("input `{}`: the feature is text, send BYTES", t.name));
                    }
                    _ => {}
                }
                columns[j] = Some(values);
            }
            let missing: Vec<&str> =
                features.iter().zip(&columns).filter(|(_, c)| c.is_none()).map(|(f, _)| f.as_str()).collect();
            if !missing.is_empty() {
                return Err(format!("missing inputs for features: {}", missing.join(", ")));
            }
            let columns: Vec<Values> = columns.into_iter().flatten().collect();
            let rows = columns[0].len();
            if let Some((f, c)) = features.iter().zip(&columns).find(|(_, c)| c.len() != rows) {
                return Err(format!("input `{f}` has {} rows, `{}` has {rows}", c.len(), features[0]));
            }
            if !has_text {
                let matrix = Array2::from_shape_fn((rows, features.len()), |(i, j)| match &columns[j] {
                    Values::Numbers(v) => v[i],
                    Values::Text(_) => f64::NAN, // excluded above
                });
                return Ok(Input::Rows(matrix));
            }
            let records = (0..rows)
                .map(|i| {
                    features
                        .iter()
                        .zip(&columns)
                        .map(|(f, c)| {
                            let value = match c {
                                Values::Numbers(v) if v[i].is_nan() => Value::Null,
                                Values::Numbers(v) => Value::Number(v[i]),
                                Values::Text(v) => v[i].clone().map_or(Value::Null, Value::Text),
                            };
                            (f.clone(), value)
                        })
                        .collect()
                })
                .collect();
            Ok(Input::Records(records))
        }
    }
}

/// One raw input value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cell<'a> {
    Number(f64),
    Text(&'a str),
    Missing,
}

impl Input {
    /// The value of feature `j` (called `name`) in row `row`.
    pub(crate) fn cell(&self, row: usize, j: usize, name: &str) -> Cell<'_> {
        match self {
            Self::Rows(r) => match r.get((row, j)) {
                Some(v) if !v.is_nan() => Cell::Number(*v),
                _ => Cell::Missing,
            },
            Self::Records(records) => match records.get(row).and_then(|r| r.get(name)) {
                Some(Value::Number(v)) if !v.is_nan() => Cell::Number(*v),
                Some(Value::Text(s)) => Cell::Text(s),
                _ => Cell::Missing,
            },
        }
    }

    /// Row `row` as a JSON object, feature name to value (`null` when missing).
    pub(crate) fn row_json(&self, row: usize, features: &[String]) -> String {
        let mut object = serde_json::Map::with_capacity(features.len());
        for (j, name) in features.iter().enumerate() {
            let value = match self.cell(row, j, name) {
                Cell::Number(v) => {
                    serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number)
                }
                Cell::Text(s) => serde_json::Value::String(s.to_string()),
                Cell::Missing => serde_json::Value::Null,
            };
            object.insert(name.clone(), value);
        }
        serde_json::Value::Object(object).to_string()
    }
}
