//! Distributions of parameters, and declared search spaces with conditional parameters.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// The distribution a parameter is drawn from.
///
/// A study keeps the distribution a parameter was first asked with; asking it later with any
/// other distribution (another kind, range, step, scale or choice list) is
/// [`Error::DistributionMismatch`]. Optuna allows a float's range to change; kiln does not, so
/// that every observation TPE learns from was drawn from the space it samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Distribution {
    /// A float in `[low, high]`: uniform, log-uniform (`log`, needs `low > 0`), or on the grid
    /// `low + k·step` (`step`, not with `log`; `high − low` must be a multiple of it).
    Float {
        /// Smallest value.
        low: f64,
        /// Largest value.
        high: f64,
        /// Sample the logarithm uniformly (TPE models it in log space).
        #[serde(default, skip_serializing_if = "is_false")]
        log: bool,
        /// Spacing of a discrete float.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<f64>,
    },
    /// An integer in `[low, high]` on the grid `low + k·step`, optionally on a log scale
    /// (`log` needs `low >= 1` and `step == 1`).
    Int {
        /// Smallest value.
        low: i64,
        /// Largest value.
        high: i64,
        /// Spacing (default 1); `high − low` must be a multiple of it.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        step: i64,
        /// Sample on a log scale (TPE models it in log space).
        #[serde(default, skip_serializing_if = "is_false")]
        log: bool,
    },
    /// One of a list of distinct JSON values (strings, numbers, booleans, null, objects).
    Categorical {
        /// The choices, in order; TPE learns from their index.
        choices: Vec<Value>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one() -> i64 {
    1
}

fn is_one(v: &i64) -> bool {
    *v == 1
}

impl Distribution {
    /// A uniform float in `[low, high]`.
    pub fn float(low: f64, high: f64) -> Self {
        Self::Float { low, high, log: false, step: None }
    }

    /// A log-uniform float in `[low, high]`, `low > 0`.
    pub fn log_float(low: f64, high: f64) -> Self {
        Self::Float { low, high, log: true, step: None }
    }

    /// A float on the grid `low, low + step, ..., high`.
    pub fn float_step(low: f64, high: f64, step: f64) -> Self {
        Self::Float { low, high, log: false, step: Some(step) }
    }

    /// An integer in `[low, high]`.
    pub fn int(low: i64, high: i64) -> Self {
        Self::Int { low, high, step: 1, log: false }
    }

    /// An integer on the grid `low, low + step, ..., high`.
    pub fn int_step(low: i64, high: i64, step: i64) -> Self {
        Self::Int { low, high, step, log: false }
    }

    /// An integer in `[low, high]` on a log scale, `low >= 1`.
    pub fn log_int(low: i64, high: i64) -> Self {
        Self::Int { low, high, step: 1, log: true }
    }

    /// One of `choices` (strings, numbers, or any JSON values).
    pub fn categorical<V: Into<Value>>(choices: impl IntoIterator<Item = V>) -> Self {
        Self::Categorical { choices: choices.into_iter().map(Into::into).collect() }
    }

    /// Checks the bounds, step, scale and choices; `name` goes into the message.
    pub fn validate(&self, name: &str) -> Result<()> {
        let bad = |why: String| Err(Error::Config(format!("parameter `{name}` ({self}): {why}")));
        match *self {
            Self::Float { low, high, log, step } => {
                if !low.is_finite() || !high.is_finite() || !(high - low).is_finite() {
                    return bad("the bounds and the width of the range must be finite".into());
                }
                if low > high {
                    return bad(format!("low {low} is above high {high}"));
                }
                if log && low <= 0.0 {
                    return bad(format!("a log scale needs low > 0, found {low}"));
                }
                if let Some(step) = step {
                    if log {
                        return bad("a float cannot have both a step and a log scale".into());
                    }
                    if !step.is_finite() || step <= 0.0 {
                        return bad(format!("the step must be positive, found {step}"));
                    }
                    let k = (high - low) / step;
                    if (k - k.round()).abs() > 1e-9 * k.max(1.0) {
                        return bad(format!("high − low = {} is not a multiple of the step {step}", high - low));
                    }
                }
            }
            Self::Int { low, high, step, log } => {
                if low > high {
                    return bad(format!("low {low} is above high {high}"));
                }
                if step < 1 {
                    return bad(format!("the step must be at least 1, found {step}"));
                }
                if (high as i128 - low as i128) % step as i128 != 0 {
                    return bad(format!(
                        "high − low = {} is not a multiple of the step {step}",
                        high as i128 - low as i128
                    ));
                }
                if log && low < 1 {
                    return bad(format!("a log scale needs low >= 1, found {low}"));
                }
                if log && step != 1 {
                    return bad("a log scale needs step 1".into());
                }
                if low.unsigned_abs() > 1 << 53 || high.unsigned_abs() > 1 << 53 {
                    return bad("the bounds must be within ±2^53".into());
                }
            }
            Self::Categorical { ref choices } => {
                if choices.is_empty() {
                    return bad("there are no choices".into());
                }
                for (i, c) in choices.iter().enumerate() {
                    if choices[..i].contains(c) {
                        return bad(format!("the choice {c} appears twice"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The internal representation of `value` (the float, the integer as a float, or the
    /// index of the choice), if `value` belongs to this distribution.
    pub(crate) fn to_internal(&self, value: &Value) -> Option<f64> {
        match *self {
            Self::Float { low, high, step, .. } => {
                let v = value.as_f64()?;
                let on_grid = step.is_none_or(|s| {
                    let k = (v - low) / s;
                    (k - k.round()).abs() <= 1e-9 * k.abs().max(1.0)
                });
                ((low..=high).contains(&v) && on_grid).then_some(v)
            }
            Self::Int { low, high, step, .. } => {
                let v = value.as_i64()?;
                ((low..=high).contains(&v) && (v - low) % step == 0).then_some(v as f64)
            }
            Self::Categorical { ref choices } => choices.iter().position(|c| c == value).map(|i| i as f64),
        }
    }

    /// The value for an internal representation made by this distribution.
    pub(crate) fn to_external(&self, internal: f64) -> Value {
        match self {
            Self::Float { .. } => serde_json::Number::from_f64(internal).map_or(Value::Null, Value::Number),
            Self::Int { .. } => Value::from(internal as i64),
            Self::Categorical { choices } => choices.get(internal as usize).cloned().unwrap_or(Value::Null),
        }
    }

    /// Whether the distribution holds one value only (TPE and random return it at once).
    pub(crate) fn single(&self) -> Option<f64> {
        match *self {
            Self::Float { low, high, .. } if low == high => Some(low),
            Self::Int { low, high, .. } if low == high => Some(low as f64),
            Self::Categorical { ref choices } if choices.len() == 1 => Some(0.0),
            _ => None,
        }
    }

    /// Whether TPE models the parameter in log space.
    pub(crate) fn is_log(&self) -> bool {
        matches!(self, Self::Float { log: true, .. } | Self::Int { log: true, .. })
    }

    /// The internal value as TPE models it: the logarithm on a log scale.
    pub(crate) fn transform(&self, internal: f64) -> f64 {
        if self.is_log() { internal.ln() } else { internal }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Float { low, high, log, step } => {
                write!(f, "float [{low}, {high}]")?;
                if *log {
                    f.write_str(" log")?;
                }
                if let Some(step) = step {
                    write!(f, " step {step}")?;
                }
                Ok(())
            }
            Self::Int { low, high, step, log } => {
                write!(f, "int [{low}, {high}]")?;
                if *step != 1 {
                    write!(f, " step {step}")?;
                }
                if *log {
                    f.write_str(" log")?;
                }
                Ok(())
            }
            Self::Categorical { choices } => {
                f.write_str("categorical [")?;
                for (i, c) in choices.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// A parameter of a declared [`SearchSpace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// The parameter's name.
    pub name: String,
    /// Its distribution.
    pub distribution: Distribution,
    /// When set, the parameter exists only in trials where this condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
}

impl ParamSpec {
    /// An unconditional parameter.
    pub fn new(name: &str, distribution: Distribution) -> Self {
        Self { name: name.to_string(), distribution, when: None }
    }

    /// Makes the parameter exist only when the categorical `parent` took `value`.
    pub fn when(self, parent: &str, value: impl Into<Value>) -> Self {
        self.when_in(parent, vec![value.into()])
    }

    /// Makes the parameter exist only when the categorical `parent` took one of `values`.
    pub fn when_in(mut self, parent: &str, values: Vec<Value>) -> Self {
        self.when = Some(Condition { param: parent.to_string(), values });
        self
    }
}

/// "Only when `param` took one of `values`": `{"param": "optimizer", "in": ["sgd"]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The parent parameter, a categorical declared earlier in the space.
    pub param: String,
    /// The parent's values for which the parameter exists.
    #[serde(rename = "in")]
    pub values: Vec<Value>,
}

/// A search space declared up front, e.g. in a config file: parameters in order, parents
/// before the parameters conditioned on them.
///
/// ```
/// use kiln_train::tune::{Distribution, ParamSpec, SearchSpace};
///
/// let space = SearchSpace::new()
///     .param(ParamSpec::new("optimizer", Distribution::categorical(["sgd", "adam"])))
///     .param(ParamSpec::new("lr", Distribution::log_float(1e-5, 1e-1)))
///     .param(ParamSpec::new("momentum", Distribution::float(0.0, 0.99)).when("optimizer", "sgd"));
/// space.validate().unwrap();
/// let json = serde_json::to_string(&space).unwrap();
/// assert_eq!(serde_json::from_str::<SearchSpace>(&json).unwrap(), space);
/// ```
///
/// [`Trial::suggest_space`](super::Trial::suggest_space) draws every active parameter.
/// Define-by-run works as well: call `suggest_*` inside an `if`, as in Optuna.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    /// The parameters, parents first.
    pub params: Vec<ParamSpec>,
}

impl SearchSpace {
    /// An empty space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter.
    pub fn param(mut self, spec: ParamSpec) -> Self {
        self.params.push(spec);
        self
    }

    /// Checks every distribution, that names are unique, and that each condition names a
    /// categorical declared earlier and values among its choices.
    pub fn validate(&self) -> Result<()> {
        let mut seen: BTreeMap<&str, &Distribution> = BTreeMap::new();
        for spec in &self.params {
            if spec.name.is_empty() {
                return Err(Error::Config("a parameter of the search space has an empty name".into()));
            }
            spec.distribution.validate(&spec.name)?;
            if let Some(cond) = &spec.when {
                let parent = seen.get(cond.param.as_str()).ok_or_else(|| {
                    Error::Config(format!(
                        "parameter `{}` depends on `{}`, which is not declared before it",
                        spec.name, cond.param
                    ))
                })?;
                let Distribution::Categorical { choices } = parent else {
                    return Err(Error::Config(format!(
                        "parameter `{}` depends on `{}`, which is {parent}, not categorical",
                        spec.name, cond.param
                    )));
                };
                if cond.values.is_empty() {
                    return Err(Error::Config(format!("the condition of parameter `{}` lists no values", spec.name)));
                }
                if let Some(v) = cond.values.iter().find(|v| !choices.contains(v)) {
                    return Err(Error::Config(format!(
                        "parameter `{}` depends on `{}` = {v}, which is not one of its choices",
                        spec.name, cond.param
                    )));
                }
            }
            if seen.insert(&spec.name, &spec.distribution).is_some() {
                return Err(Error::Config(format!("parameter `{}` is declared twice", spec.name)));
            }
        }
        Ok(())
    }
}
