//! `kiln data`: validate, profile, hash and split data files from the shell.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use kiln_data::{Dataset, DatasetProfile, ProfileOptions, ScanOptions, Schema, SplitFractions};
use serde_json::json;

/// The exit status of `kiln data validate` when the data fails a check (1 is an error, 2 a
/// usage error).
pub const EXIT_INVALID: u8 = 3;

/// The `kiln data` subcommands.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Check a data file (CSV, Parquet, Arrow IPC, NDJSON) against a schema file (TOML or JSON)
    /// and report every failure by row, file line and column.
    ///
    /// Exits 0 when every check passes, 3 when any fails, 1 when the file or schema cannot be
    /// read.
    ///
    /// Example: kiln data validate data/penguins.csv --schema penguins.schema.toml --quarantine bad.parquet
    Validate {
        /// The data file.
        file: PathBuf,
        /// The schema (`.toml` or `.json`; the format is kiln-data's `Schema`).
        #[arg(long)]
        schema: PathBuf,
        /// Write the failing rows, with `_row` and `_reasons` columns, to this Parquet file.
        #[arg(long)]
        quarantine: Option<PathBuf>,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Profile every column: count, missing values, and mean, spread and quantiles of numbers
    /// or the most frequent labels of text.
    ///
    /// Example: kiln data profile data/penguins.csv --out penguins.profile.json
    Profile {
        /// The data file.
        file: PathBuf,
        /// Also write the whole profile (with its drift reference sample) as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the profile as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Content digest (BLAKE3) of a file or a directory tree, the dataset version kiln-track
    /// records.
    ///
    /// Example: kiln data hash data/
    Hash {
        /// A file or directory.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Cut a reproducible stratified train/validation/test split and write each part as a
    /// Parquet file (`train.parquet`, `val.parquet`, `test.parquet`) in a directory.
    ///
    /// Example: kiln data split data/penguins.csv --label species --fractions 0.8,0.1,0.1 --seed 7 --out splits/
    Split {
        /// The data file.
        file: PathBuf,
        /// The column whose class shares each part keeps.
        #[arg(long)]
        label: String,
        /// Train, validation and test shares, summing to 1.
        #[arg(long, default_value = "0.7,0.15,0.15")]
        fractions: String,
        /// The seed; the same seed and data give the same split.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The directory to write the parts into (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Reads a data file: CSV through `Dataset::load_csv` (so failures name file lines), any
/// other format through kiln-data's scanner.
pub fn load(path: &Path) -> Result<Dataset> {
    let is_csv = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        return Ok(Dataset::load_csv(path)?);
    }
    let frame = kiln_data::scan(path, &ScanOptions::default())?.collect()?;
    Ok(Dataset::from_frame(frame, path.display().to_string())?)
}

/// Runs one `kiln data` subcommand; the exit code says whether the data passed.
pub fn run(command: DataCommand) -> Result<ExitCode> {
    match command {
        DataCommand::Validate { file, schema, quarantine, json } => {
            validate(&file, &schema, quarantine.as_deref(), json)
        }
        DataCommand::Profile { file, out, json } => profile(&file, out.as_deref(), json),
        DataCommand::Hash { path, json } => hash(&path, json),
        DataCommand::Split { file, label, fractions, seed, out, json } => {
            split(&file, &label, &fractions, seed, &out, json)
        }
    }
}

fn validate(file: &Path, schema: &Path, quarantine: Option<&Path>, json: bool) -> Result<ExitCode> {
    let schema = Schema::load(schema)?;
    let data = load(file)?;
    let report = match quarantine {
        Some(path) => {
            let (_, q) = schema.split_valid(&data)?;
            q.write_parquet(path).with_context(|| format!("writing the quarantine to {}", path.display()))?;
            q.report
        }
        None => schema.check(&data)?,
    };
    if json {
        let mut by_check: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for f in &report.failures {
            let column = f.column.clone().unwrap_or_else(|| "(table)".into());
            *by_check.entry(column).or_default().entry(f.check.clone()).or_default() += 1;
        }
        let first: Vec<_> = report
            .failures
            .iter()
            .take(20)
            .map(|f| json!({"row": f.row, "line": f.line, "column": f.column, "check": f.check, "found": f.found}))
            .collect();
        let doc = json!({
            "file": file.display().to_string(), "rows": report.rows, "valid": report.is_valid(),
            "failures": report.total, "bad_rows": report.bad_rows.len(), "by_column": by_check,
            "first_failures": first, "quarantine": quarantine.map(|p| p.display().to_string()),
        });
        say!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        say!("{}: {}", file.display(), report.summary());
        if let Some(path) = quarantine {
            say!("{} failing row(s) written to {}", report.bad_rows.len(), path.display());
        }
    }
    Ok(if report.is_valid() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_INVALID) })
}

fn profile(file: &Path, out: Option<&Path>, json: bool) -> Result<ExitCode> {
    let data = load(file)?;
    let profile = DatasetProfile::of(data.frame(), &ProfileOptions::default())?;
    if let Some(path) = out {
        kiln_track::durable::write_atomic(path, profile.to_json()?.as_bytes())?;
    }
    if json {
        say!("{}", profile.to_json()?);
        return Ok(ExitCode::SUCCESS);
    }
    say!("{}: {} rows, {} columns", file.display(), profile.rows, profile.columns.len());
    for c in &profile.columns {
        let detail = match (&c.numeric, &c.categorical) {
            (Some(n), _) => format!(
                "mean {:.4}  std {:.4}  min {:.4}  median {}  max {:.4}",
                n.mean,
                n.std,
                n.min,
                n.quantiles.iter().find(|(q, _)| *q == 0.5).map_or("-".into(), |(_, v)| format!("{v:.4}")),
                n.max
            ),
            (None, Some(t)) => {
                let top: Vec<String> = t.top.iter().take(5).map(|(v, n)| format!("{v} ({n})")).collect();
                format!("{} distinct; top: {}", t.unique, top.join(", "))
            }
            (None, None) => "no values".into(),
        };
        say!("  {:<24} {:>8} present {:>6} missing  {detail}", c.name, c.count, c.missing);
    }
    if let Some(path) = out {
        say!("profile written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn hash(path: &Path, json: bool) -> Result<ExitCode> {
    let digest = kiln_data::hash_path(path, None)?;
    if json {
        let doc = json!({"path": path.display().to_string(), "blake3": digest.digest, "files": digest.files, "bytes": digest.bytes});
        say!("{doc}");
    } else {
        say!("{}  {} ({} file(s), {} bytes)", digest.digest, path.display(), digest.files, digest.bytes);
    }
    Ok(ExitCode::SUCCESS)
}

fn split(file: &Path, label: &str, fractions: &str, seed: u64, out: &Path, json: bool) -> Result<ExitCode> {
    let parts: Vec<f64> = fractions
        .split(',')
        .map(|p| p.trim().parse::<f64>().with_context(|| format!("--fractions: {p:?} is not a number")))
        .collect::<Result<_>>()?;
    let [train, val, test] = parts[..] else {
        bail!("--fractions takes three shares (train,val,test), got {}", parts.len());
    };
    let fractions = SplitFractions::new(train, val, test)?;
    let data = load(file)?;
    let labels = data.to_strings(label)?;
    let split = kiln_data::stratified_split(&labels, fractions, seed)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for (name, rows) in [("train", &split.train), ("val", &split.val), ("test", &split.test)] {
        let path = out.join(format!("{name}.parquet"));
        kiln_data::write_parquet(data.take(rows)?.frame(), &path)?;
        written.push((name, rows.len(), path));
    }
    if json {
        let parts: BTreeMap<&str, _> =
            written.iter().map(|(n, rows, p)| (*n, json!({"rows": rows, "path": p.display().to_string()}))).collect();
        say!("{}", json!({"file": file.display().to_string(), "label": label, "seed": seed, "parts": parts}));
    } else {
        for (name, rows, path) in &written {
            say!("{name:<5} {rows:>8} rows  {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
