//! A study as replayed from its journal, indexed for the samplers and pruners: per parameter,
//! a column of values by trial number and the finished trials sorted by value and by number,
//! kept up to date line by line so that sampling never re-sorts the whole history.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::journal::{FORMAT_VERSION, Op, ParamValue};
use super::space::Distribution;
use super::study::{Direction, FrozenTrial, StudyConfig, TrialState};

/// One trial as replayed.
#[derive(Debug, Clone)]
pub(crate) struct TrialRec {
    pub state: TrialState,
    pub value: Option<f64>,
    /// (column, internal value) of parameters drawn from the study's distribution.
    pub params: Vec<(usize, f64)>,
    /// Parameters recorded with another distribution than the study's (possible only in a
    /// journal written by other tools); kept for display, ignored by the samplers.
    pub foreign: Vec<(String, ParamValue)>,
    /// (step, value) in report order; steps are unique.
    pub intermediate: Vec<(u64, f64)>,
    /// Values recorded at the rungs of successive halving.
    pub rungs: Vec<f64>,
    pub attrs: BTreeMap<String, Value>,
    pub worker: String,
    pub grid_id: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    pub started_ms: i64,
    pub last_ms: i64,
    pub finished_ms: Option<i64>,
    pub reason: Option<String>,
}

impl TrialRec {
    /// The latest step reported and its value.
    pub(crate) fn last_step(&self) -> Option<(u64, f64)> {
        self.intermediate.iter().copied().max_by_key(|(s, _)| *s)
    }

    pub(crate) fn param(&self, column: usize) -> Option<f64> {
        self.params.iter().find(|(c, _)| *c == column).map(|(_, v)| *v)
    }
}

/// One parameter across the study.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    pub dist: Distribution,
    /// The transformed internal value (log on a log scale, the index of a choice) by trial
    /// number; NaN where the trial lacks the parameter.
    pub values: Vec<f64>,
    /// Complete and pruned trials that have the parameter, by (transformed value, number).
    pub by_value: Vec<(f64, u32)>,
    /// The same trials by number.
    pub by_number: Vec<u32>,
}

impl Column {
    pub(crate) fn value(&self, trial: u32) -> Option<f64> {
        self.values.get(trial as usize).copied().filter(|v| !v.is_nan())
    }

    fn insert_finished(&mut self, trial: u32) {
        if let Some(v) = self.value(trial) {
            let at = self.by_value.partition_point(|&(w, n)| w.total_cmp(&v).then(n.cmp(&trial)).is_lt());
            self.by_value.insert(at, (v, trial));
            let at = self.by_number.partition_point(|&n| n < trial);
            self.by_number.insert(at, trial);
        }
    }
}

/// The replayed study.
#[derive(Debug, Clone, Default)]
pub(crate) struct StudyState {
    pub config: Option<StudyConfig>,
    pub trials: Vec<TrialRec>,
    pub columns: Vec<Column>,
    pub column_of: HashMap<String, usize>,
    /// Complete trials by (value, number), the value negated when maximising: best first.
    pub complete: Vec<(f64, u32)>,
    /// Pruned trials by number.
    pub pruned: Vec<u32>,
    pub running: BTreeSet<u32>,
    /// Intermediate values of complete trials, by step.
    pub step_values: HashMap<u64, Vec<f64>>,
    /// Values recorded at each rung of successive halving, by any trial.
    pub rung_values: Vec<Vec<f64>>,
    /// Bumped whenever a trial completes or is pruned (samplers cache on it).
    pub generation: u64,
    /// Operations on trials that had already ended.
    pub ignored_ops: u64,
}

impl StudyState {
    pub(crate) fn direction(&self) -> Direction {
        self.config.as_ref().map(|c| c.direction).unwrap_or_default()
    }

    /// Complete plus pruned trials.
    pub(crate) fn n_finished(&self) -> usize {
        self.complete.len() + self.pruned.len()
    }

    pub(crate) fn column(&self, name: &str) -> Option<&Column> {
        self.column_of.get(name).map(|&c| &self.columns[c])
    }

    /// Applies one line. Checks everything before changing anything, so a refused line leaves
    /// the state as it was.
    pub(crate) fn apply(&mut self, op: Op) -> Result<(), String> {
        if let Op::Study { format, study, .. } = op {
            if self.config.is_some() {
                return Err("a second `study` line".into());
            }
            if format != FORMAT_VERSION {
                return Err(format!("journal format {format} is not supported (this kiln reads {FORMAT_VERSION})"));
            }
            self.config = Some(study);
            return Ok(());
        }
        if self.config.is_none() {
            return Err("the first line must be the `study` line".into());
        }
        if let Op::Trial { number, ms, worker, grid_id, heartbeat_ms } = op {
            if number != self.trials.len() as u64 {
                return Err(format!("trial number {number}, expected {}", self.trials.len()));
            }
            if number >= u64::from(u32::MAX) {
                return Err("too many trials".into());
            }
            self.running.insert(number as u32);
            self.trials.push(TrialRec {
                state: TrialState::Running,
                value: None,
                params: Vec::new(),
                foreign: Vec::new(),
                intermediate: Vec::new(),
                rungs: Vec::new(),
                attrs: BTreeMap::new(),
                worker,
                grid_id,
                heartbeat_ms,
                started_ms: ms,
                last_ms: ms,
                finished_ms: None,
                reason: None,
            });
            return Ok(());
        }
        let (trial, ms) = match &op {
            Op::Study { .. } | Op::Trial { .. } | Op::Batch { .. } => return Err("misplaced line".into()),
            Op::Params { trial, ms, .. }
            | Op::Report { trial, ms, .. }
            | Op::Rung { trial, ms, .. }
            | Op::Attr { trial, ms, .. }
            | Op::Heartbeat { trial, ms }
            | Op::Finish { trial, ms, .. } => (*trial, *ms),
        };
        let Some(rec) = self.trials.get(trial as usize) else {
            return Err(format!("trial {trial} was never created"));
        };
        if rec.state != TrialState::Running {
            // Written by a worker whose trial was failed as stale meanwhile: it lost.
            self.ignored_ops += 1;
            return Ok(());
        }
        let t = trial as usize;
        match op {
            Op::Study { .. } | Op::Trial { .. } | Op::Batch { .. } => return Err("misplaced line".into()),
            Op::Params { params, .. } => {
                let mut resolved = Vec::with_capacity(params.len());
                for (name, pv) in &params {
                    pv.distribution.validate(name).map_err(|e| e.to_string())?;
                    let internal = pv
                        .distribution
                        .to_internal(&pv.value)
                        .ok_or_else(|| format!("parameter `{name}`: {} is not in {}", pv.value, pv.distribution))?;
                    let column = self.column_of.get(name).copied();
                    if let Some(c) = column
                        && rec.param(c).is_some()
                    {
                        return Err(format!("parameter `{name}` of trial {trial} is set twice"));
                    }
                    if rec.foreign.iter().any(|(n, _)| n == name) {
                        return Err(format!("parameter `{name}` of trial {trial} is set twice"));
                    }
                    resolved.push((name.clone(), pv.clone(), internal, column));
                }
                for (name, pv, internal, column) in resolved {
                    let c = match column {
                        Some(c) => c,
                        None => {
                            self.columns.push(Column {
                                name: name.clone(),
                                dist: pv.distribution.clone(),
                                values: Vec::new(),
                                by_value: Vec::new(),
                                by_number: Vec::new(),
                            });
                            self.column_of.insert(name.clone(), self.columns.len() - 1);
                            self.columns.len() - 1
                        }
                    };
                    let rec = &mut self.trials[t];
                    if self.columns[c].dist != pv.distribution {
                        tracing::warn!(
                            "trial {trial}: parameter `{name}` recorded as {}, the study has it as {}; \
                             the samplers ignore this value",
                            pv.distribution,
                            self.columns[c].dist
                        );
                        rec.foreign.push((name, pv));
                        continue;
                    }
                    rec.params.push((c, internal));
                    let col = &mut self.columns[c];
                    if col.values.len() <= t {
                        col.values.resize(t + 1, f64::NAN);
                    }
                    col.values[t] = col.dist.transform(internal);
                }
            }
            Op::Report { step, value, .. } => {
                let rec = &mut self.trials[t];
                if !rec.intermediate.iter().any(|(s, _)| *s == step) {
                    rec.intermediate.push((step, value));
                }
            }
            Op::Rung { rung, value, .. } => {
                let rec = &mut self.trials[t];
                if rung as usize == rec.rungs.len() {
                    rec.rungs.push(value);
                    if self.rung_values.len() <= rung as usize {
                        self.rung_values.resize(rung as usize + 1, Vec::new());
                    }
                    self.rung_values[rung as usize].push(value);
                }
            }
            Op::Attr { key, value, .. } => {
                self.trials[t].attrs.insert(key, value);
            }
            Op::Heartbeat { .. } => {}
            Op::Finish { state, value, reason, .. } => {
                match state {
                    TrialState::Running => return Err(format!("trial {trial} finished as `running`")),
                    TrialState::Complete if value.is_none_or(f64::is_nan) => {
                        return Err(format!("trial {trial} completed without a value"));
                    }
                    _ => {}
                }
                let maximize = self.direction() == Direction::Maximize;
                let rec = &mut self.trials[t];
                rec.state = state;
                rec.value = value;
                rec.reason = reason;
                rec.finished_ms = Some(ms);
                self.running.remove(&(trial as u32));
                match state {
                    TrialState::Complete => {
                        let v = value.unwrap_or(f64::NAN);
                        let key = if maximize { -v } else { v };
                        let n = trial as u32;
                        let at = self.complete.partition_point(|&(w, m)| w.total_cmp(&key).then(m.cmp(&n)).is_lt());
                        self.complete.insert(at, (key, n));
                        for &(step, v) in &rec.intermediate {
                            self.step_values.entry(step).or_default().push(v);
                        }
                    }
                    TrialState::Pruned => self.pruned.push(trial as u32),
                    TrialState::Failed | TrialState::Running => {}
                }
                if matches!(state, TrialState::Complete | TrialState::Pruned) {
                    let params = self.trials[t].params.clone();
                    for (c, _) in params {
                        self.columns[c].insert_finished(trial as u32);
                    }
                    self.generation += 1;
                }
            }
        }
        let rec = &mut self.trials[t];
        rec.last_ms = rec.last_ms.max(ms);
        Ok(())
    }

    /// The public view of trial `number`.
    pub(crate) fn frozen(&self, number: usize) -> Option<FrozenTrial> {
        let rec = self.trials.get(number)?;
        let mut params = BTreeMap::new();
        let mut distributions = BTreeMap::new();
        for &(c, internal) in &rec.params {
            let col = &self.columns[c];
            params.insert(col.name.clone(), col.dist.to_external(internal));
            distributions.insert(col.name.clone(), col.dist.clone());
        }
        for (name, pv) in &rec.foreign {
            params.insert(name.clone(), pv.value.clone());
            distributions.insert(name.clone(), pv.distribution.clone());
        }
        Some(FrozenTrial {
            number: number as u64,
            state: rec.state,
            value: rec.value,
            params,
            distributions,
            intermediate_values: rec.intermediate.iter().copied().collect(),
            user_attrs: rec.attrs.clone(),
            worker: rec.worker.clone(),
            started_ms: rec.started_ms,
            last_seen_ms: rec.last_ms,
            finished_ms: rec.finished_ms,
            reason: rec.reason.clone(),
        })
    }
}
