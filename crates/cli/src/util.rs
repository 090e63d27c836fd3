//! Small helpers shared by the subcommands: durations, times, run ids, tables as JSON.

use std::time::Duration;

use anyhow::{Result, bail};
use kiln_track::Store;

/// Parses `90s`, `30m`, `2h`, `1d`, `1h30m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => bail!("{text:?} is not a duration: unexpected {c:?} (use e.g. 90s, 30m, 2h, 1d, 1h30m)"),
        };
        if number.is_empty() {
            bail!("{text:?} is not a duration: a number must come before {c:?}");
        }
        let Ok(n) = number.parse::<u64>() else { bail!("{text:?} is not a duration: {number} is too large") };
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() || t.is_empty() {
        bail!("{text:?} is not a duration: give a unit after every number (90s, 30m, 2h, 1d)");
    }
    Ok(Duration::from_secs(total))
}

/// `2026-12-02 18:29:23` (UTC) for milliseconds since the Unix epoch.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Whether smaller is better for a metric, by the words of its name (split at `_`, `.`, `/`,
/// `-`): `loss`, `error`, `ece`, `mse`, `mae`, `rmse` or `seconds`.
pub fn lower_is_better(metric: &str) -> bool {
    metric
        .split(['_', '.', '/', '-'])
        .any(|w| ["loss", "error", "ece", "mse", "mae", "rmse", "seconds"].contains(&w.to_ascii_lowercase().as_str()))
}

/// A number for JSON output: finite ones as numbers, NaN and infinities as the strings
/// `"NaN"`, `"inf"` and `"-inf"` (JSON has no such numbers; `null` would hide what happened).
pub fn finite_json(v: f64) -> serde_json::Value {
    if v.is_finite() { serde_json::json!(v) } else { serde_json::json!(v.to_string()) }
}

/// Trial parameters as `name=value` pairs separated by spaces.
pub fn params_text(params: &std::collections::BTreeMap<String, serde_json::Value>) -> String {
    params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// A run id, or an unambiguous prefix of one (`kiln runs show 019a3f`).
pub fn resolve_run(store: &Store, id: &str) -> Result<String> {
    if id.is_empty() {
        bail!("an empty run id matches every run; give the id or a prefix of it");
    }
    let ids = store.run_ids()?;
    if ids.iter().any(|i| i == id) {
        return Ok(id.to_string());
    }
    let matching: Vec<&String> = ids.iter().filter(|i| i.starts_with(id)).collect();
    match matching[..] {
        [one] => Ok(one.clone()),
        [] => bail!("no run {id:?} in {}", store.root().display()),
        _ => bail!(
            "{id:?} matches {} runs ({}{}); give more of the id",
            matching.len(),
            matching.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            if matching.len() > 3 { ", ..." } else { "" }
        ),
    }
}

/// A table as a JSON array of row objects (every row, unlike the text display).
pub fn frame_json(frame: &mut kiln_track::DataFrame) -> Result<String> {
    use polars::prelude::{JsonFormat, JsonWriter, SerWriter};
    let mut out = Vec::new();
    JsonWriter::new(&mut out).with_json_format(JsonFormat::Json).finish(frame)?;
    Ok(String::from_utf8(out)?)
}

/// A table as CSV with a header (every row).
pub fn frame_csv(frame: &mut kiln_track::DataFrame) -> Result<String> {
    use polars::prelude::{CsvWriter, SerWriter};
    let mut out = Vec::new();
    CsvWriter::new(&mut out).include_header(true).finish(frame)?;
    Ok(String::from_utf8(out)?)
}

/// A metric value for tables: 4 decimals, or `-`.
pub fn num(v: Option<f64>) -> String {
    v.map_or_else(
        || "-".into(),
        |v| if v.fract() == 0.0 && v.abs() < 1e12 { format!("{v:.0}") } else { format!("{v:.4}") },
    )
}

/// A progress bar on stderr for long work, drawn only when stderr is a terminal (so scripts,
/// logs and `--json` consumers see nothing of it).
pub fn progress(what: &str, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    let template = format!("{{msg}} {{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left)");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// Moves a [`progress`] bar to `done` of `all`.
pub fn tick(bar: &indicatif::ProgressBar, done: usize, all: usize) {
    bar.set_length(all as u64);
    bar.set_position(done as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_direction_goes_by_whole_words() {
        for lower in ["val_loss", "test_ece", "log_loss", "train/mse", "epoch_seconds", "Error"] {
            assert!(lower_is_better(lower), "{lower}");
        }
        for higher in ["val_accuracy", "recent_accuracy", "macro_f1", "lossless_ratio"] {
            assert!(!lower_is_better(higher), "{higher}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "h", "1x", "1h30", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_236_163_000), "2026-12-02 18:29:23");
    }
}
