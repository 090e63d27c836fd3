//! `kiln registry`: models, versions, aliases, promotion, rollback, history.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use kiln_track::{ModelVersion, Store};
use kiln_train::PromotionGate;
use serde_json::json;

use crate::util::utc;

/// The exit status of `kiln registry promote` when the gate refuses the version.
pub const EXIT_REFUSED: u8 = 3;

/// The `kiln registry` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// List registered models, or the versions of one with their metrics and aliases.
    ///
    /// Example: kiln registry ls digits-mlp
    Ls {
        /// A model name.
        model: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Point an alias (default `production`) at a version, after checking a promotion gate:
    /// each --require must hold for the version's metrics, and no required metric may be worse
    /// than the current alias holder's by more than --tolerance. Exits 3 when refused.
    ///
    /// Example: kiln registry promote digits-mlp 4 --require test_accuracy=0.95 --tolerance 0.01 --reason "retrained on November data"
    Promote {
        /// The model.
        model: String,
        /// The version number (or an alias or `latest`).
        version: String,
        /// The alias to move.
        #[arg(long, default_value = "production")]
        to: String,
        /// METRIC=BOUND: a minimum (a maximum for metrics where lower is better, such as
        /// log_loss, ece or anything named *loss* or *error*).
        #[arg(long)]
        require: Vec<String>,
        /// How much worse than the current alias holder a required metric may be.
        #[arg(long, default_value_t = 0.0)]
        tolerance: f64,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Point an alias at a version without a gate, or remove it with --remove.
    ///
    /// Example: kiln registry alias digits-mlp staging 5
    Alias {
        /// The model.
        model: String,
        /// The alias (`production`, `staging`, `canary`, ...).
        alias: String,
        /// The version number (or another alias, or `latest`).
        #[arg(required_unless_present = "remove")]
        version: Option<String>,
        /// Remove the alias instead.
        #[arg(long, conflicts_with = "version")]
        remove: bool,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Move an alias (default `production`) back to the version it pointed to before.
    ///
    /// Example: kiln registry rollback digits-mlp --reason "online accuracy dropped"
    Rollback {
        /// The model.
        model: String,
        /// The alias to move back.
        #[arg(long, default_value = "production")]
        alias: String,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Every transition of a model, oldest first: registrations, alias moves, rollbacks, tags.
    ///
    /// Example: kiln registry history digits-mlp --json
    History {
        /// The model.
        model: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn version_json(v: &ModelVersion, aliases: &BTreeMap<String, u32>) -> serde_json::Value {
    json!({
        "model": v.model, "version": v.version, "created_ms": v.created_ms, "created_by": v.created_by,
        "run_id": v.lineage.run_id, "git_commit": v.lineage.git_commit, "dataset_digests": v.lineage.dataset_digests,
        "package_digest": v.package_digest, "metrics": v.metrics, "description": v.description, "tags": v.tags,
        "aliases": aliases.iter().filter(|(_, n)| **n == v.version).map(|(a, _)| a).collect::<Vec<_>>(),
        "package_dir": v.package_dir.display().to_string(),
    })
}

/// Runs one `kiln registry` subcommand.
pub fn run(store: &Store, command: RegistryCommand) -> Result<ExitCode> {
    let registry = store.registry();
    match command {
        RegistryCommand::Ls { model: None, json } => {
            let mut rows = Vec::new();
            for model in registry.models()? {
                let versions = registry.versions(&model)?;
                let aliases = registry.aliases(&model)?;
                rows.push((model, versions.len(), versions.last().map(|v| v.created_ms), aliases));
            }
            if json {
                let doc: Vec<_> = rows
                    .iter()
                    .map(|(m, n, last, a)| json!({"model": m, "versions": n, "last_registered_ms": last, "aliases": a}))
                    .collect();
                say!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                say!("{:<24} {:>8}  {:<19}  aliases", "model", "versions", "last registered");
                for (model, n, last, aliases) in &rows {
                    let aliases: Vec<String> = aliases.iter().map(|(a, v)| format!("{a}=v{v}")).collect();
                    say!("{model:<24} {n:>8}  {:<19}  {}", last.map(utc).unwrap_or_default(), aliases.join(" "));
                }
            }
        }
        RegistryCommand::Ls { model: Some(model), json } => {
            let aliases = registry.aliases(&model)?;
            let versions = registry.versions(&model)?;
            if versions.is_empty() {
                bail!("no model {model:?} in {}", store.root().display());
            }
            if json {
                let doc: Vec<_> = versions.iter().map(|v| version_json(v, &aliases)).collect();
                say!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                say!("{:<8} {:<19}  {:<20}  {:<20}  metrics", "version", "registered (UTC)", "run", "aliases");
                for v in &versions {
                    let names: Vec<&str> =
                        aliases.iter().filter(|(_, n)| **n == v.version).map(|(a, _)| a.as_str()).collect();
                    let metrics: Vec<String> = v.metrics.iter().map(|(k, x)| format!("{k}={x:.4}")).collect();
                    say!(
                        "{:<8} {:<19}  {:<20}  {:<20}  {}",
                        format!("v{}", v.version),
                        utc(v.created_ms),
                        v.lineage.run_id.as_deref().unwrap_or("-"),
                        names.join(","),
                        metrics.join(" ")
                    );
                }
            }
        }
        RegistryCommand::Promote { model, version, to, require, tolerance, reason, json } => {
            let candidate = registry.resolve(&model, &version)?;
            let mut gate = PromotionGate { tolerance, ..PromotionGate::default() };
            for spec in &require {
                let (metric, bound) =
                    spec.split_once('=').with_context(|| format!("--require {spec:?}: expected METRIC=BOUND"))?;
                let bound: f64 =
                    bound.parse().with_context(|| format!("--require {spec:?}: {bound:?} is not a number"))?;
                if crate::util::lower_is_better(metric) {
                    gate.lower_is_better.push(metric.to_string());
                }
                gate.thresholds.insert(metric.to_string(), bound);
            }
            let current = match registry.resolve(&model, &to) {
                Ok(v) => Some(v),
                Err(kiln_track::Error::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let decision = gate.decide(&candidate.metrics, current.as_ref().map(|v| &v.metrics));
            let previous = if decision.passed {
                let why = reason.unwrap_or_else(|| match &current {
                    Some(c) if gate.thresholds.is_empty() => format!("promoted over v{}", c.version),
                    Some(c) => format!("promotion gate passed against v{}", c.version),
                    None => "promoted".into(),
                });
                registry.set_alias_because(&model, &to, candidate.version, &why)?
            } else {
                None
            };
            if json {
                let doc = json!({
                    "model": model, "alias": to, "version": candidate.version, "promoted": decision.passed,
                    "previous": previous.or(current.as_ref().map(|c| c.version)), "reasons": decision.reasons,
                });
                say!("{doc}");
            } else if decision.passed {
                let from = previous.map(|p| format!("v{p} -> ")).unwrap_or_default();
                say!("{model} {to}: {from}v{}", candidate.version);
            } else {
                say!("{model} v{} not promoted to {to}:", candidate.version);
                for r in &decision.reasons {
                    say!("  {r}");
                }
            }
            return Ok(if decision.passed { ExitCode::SUCCESS } else { ExitCode::from(EXIT_REFUSED) });
        }
        RegistryCommand::Alias { model, alias, version: _, remove: true, reason } => {
            let was = registry.remove_alias(&model, &alias, reason.as_deref())?;
            say!("{model} {alias} removed (was v{was})");
        }
        RegistryCommand::Alias { model, alias, version, remove: false, reason } => {
            let reference = version.context("give a version, or --remove")?;
            let target = registry.resolve(&model, &reference)?;
            let previous = match reason {
                Some(r) => registry.set_alias_because(&model, &alias, target.version, &r)?,
                None => registry.set_alias(&model, &alias, target.version)?,
            };
            let from = previous.map(|p| format!("v{p} -> ")).unwrap_or_default();
            say!("{model} {alias}: {from}v{}", target.version);
        }
        RegistryCommand::Rollback { model, alias, reason } => {
            let before = registry.resolve(&model, &alias).ok().map(|v| v.version);
            let now = registry.rollback(&model, &alias, reason.as_deref())?;
            let from = before.map(|p| format!("v{p} -> ")).unwrap_or_default();
            say!("{model} {alias} rolled back: {from}v{now}");
        }
        RegistryCommand::History { model, json } => {
            let events = registry.history(&model)?;
            if events.is_empty() {
                bail!("no model {model:?} in {}", store.root().display());
            }
            if json {
                say!("{}", serde_json::to_string_pretty(&events)?);
            } else {
                for e in &events {
                    let what = match (e.event, e.alias.as_deref(), e.version, e.from_version) {
                        (kiln_track::EventKind::Registered, _, Some(v), _) => format!("registered v{v}"),
                        (_, Some(a), Some(v), Some(f)) => format!("{} {a}: v{f} -> v{v}", e.event.as_str()),
                        (_, Some(a), Some(v), None) => format!("{} {a}: v{v}", e.event.as_str()),
                        (_, Some(a), None, Some(f)) => format!("{} {a} (was v{f})", e.event.as_str()),
                        (kiln_track::EventKind::TagSet, _, Some(v), _) => {
                            let (k, val) = e.tag.clone().unwrap_or_default();
                            format!("tag_set v{v} {k}={val}")
                        }
                        _ => e.event.as_str().to_string(),
                    };
                    let why = e.reason.as_deref().map(|r| format!("  ({r})")).unwrap_or_default();
                    say!("{}  {:<16} {what}{why}", utc(e.at_ms), e.actor);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
