//! `kiln store`: compaction, copying runs between stores, garbage collection.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use kiln_track::{GcOptions, Store};

use crate::util::parse_duration;

/// The exit status of `kiln store sync` when some records conflicted (the rest was copied).
pub const EXIT_CONFLICTS: u8 = 3;

/// The shortest `--grace` that `kiln store gc` accepts without `--force`.
const MIN_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// The `kiln store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Fold finished runs into the store's Parquet tables (queries get faster; nothing changes).
    ///
    /// Example: kiln --store /scratch/lab/kiln-store store compact
    Compact {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copy runs (params, metrics, artifacts) that are new or changed into another store, e.g.
    /// from node-local scratch to the lab's shared store. Safe to repeat; exits 3 when records
    /// conflict (both stores hold different data under one name), after copying the rest.
    ///
    /// Example: kiln --store $TMPDIR/kiln-store store sync /project/lab/kiln-store
    Sync {
        /// The destination store (created if needed).
        dest: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove artifact content no run refers to any more (an artifact logged again under the
    /// same name leaves its old content behind), and leftovers of interrupted writes. Runs,
    /// metrics and registered models are never removed.
    ///
    /// Example: kiln store gc --dry-run
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Leave anything younger than this alone (a writer may be about to refer to it). It
        /// must exceed the longest artifact upload plus the clock skew between hosts.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Allow a grace period under ten minutes (only when nothing writes to the store).
        #[arg(long)]
        force: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `kiln store` subcommand.
pub fn run(store: &Store, command: StoreCommand) -> Result<ExitCode> {
    match command {
        StoreCommand::Compact { json } => {
            let bar = crate::util::progress("compacting", "runs");
            let report = store.compact_with_progress(|done, all| crate::util::tick(&bar, done, all))?;
            bar.finish_and_clear();
            if json {
                say!(
                    "{}",
                    serde_json::json!({"runs": report.runs, "points": report.points, "batches": report.batches,
                        "seconds": report.seconds, "removed_uncommitted": report.removed_uncommitted})
                );
            } else {
                say!(
                    "compacted {} run(s), {} metric point(s) into {} batch(es) in {:.2}s; removed {} leftover file(s)",
                    report.runs,
                    report.points,
                    report.batches.len(),
                    report.seconds,
                    report.removed_uncommitted
                );
            }
        }
        StoreCommand::Sync { dest, json } => {
            let target = Store::open(&dest)?;
            let bar = crate::util::progress("syncing", "runs");
            let r = store.sync_to_with_progress(&target, |done, all| crate::util::tick(&bar, done, all))?;
            bar.finish_and_clear();
            if json {
                say!(
                    "{}",
                    serde_json::json!({"runs_created": r.runs_created, "runs_updated": r.runs_updated,
                        "runs_unchanged": r.runs_unchanged, "segment_bytes": r.segment_bytes,
                        "objects_copied": r.objects_copied, "versions_copied": r.versions_copied,
                        "registry_records_copied": r.registry_records_copied, "conflicts": r.conflicts,
                        "seconds": r.seconds})
                );
            } else {
                say!(
                    "synced to {}: {} run(s) new, {} updated, {} unchanged; {} artifact object(s), {} model version(s), \
                     {} registry record(s) copied in {:.2}s",
                    dest.display(),
                    r.runs_created,
                    r.runs_updated,
                    r.runs_unchanged,
                    r.objects_copied,
                    r.versions_copied,
                    r.registry_records_copied,
                    r.seconds
                );
                for c in &r.conflicts {
                    eprintln!("conflict, not copied: {c}");
                }
            }
            if !r.conflicts.is_empty() {
                // Everything else was copied; the conflicts need a person.
                return Ok(ExitCode::from(EXIT_CONFLICTS));
            }
        }
        StoreCommand::Gc { dry_run, grace, force, json } => {
            if !dry_run && !force && grace < MIN_GRACE {
                anyhow::bail!(
                    "--grace {}s is under ten minutes: a directory artifact still being stored, or a \
                     clock behind on another host, could lose content; pass --force if nothing writes \
                     to the store",
                    grace.as_secs()
                );
            }
            let report = store.gc(&GcOptions { dry_run, grace })?;
            if json {
                say!("{}", serde_json::to_string(&report)?);
            } else {
                let verb = if dry_run { "would remove" } else { "removed" };
                say!(
                    "{} object(s), {} referenced by {} run(s); {verb} {} unreferenced ({:.1} MiB), {} temporary file(s), \
                     {} staging dir(s); kept {} unreferenced younger than {}s",
                    report.objects,
                    report.referenced,
                    report.runs,
                    report.removed_objects,
                    report.removed_bytes as f64 / (1u64 << 20) as f64,
                    report.removed_temporary,
                    report.removed_staging,
                    report.young_unreferenced,
                    grace.as_secs()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
