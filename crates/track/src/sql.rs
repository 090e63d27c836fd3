//! SQL over the lakehouse tables, with Polars.

use polars::prelude::{DataFrame, LazyFrame};
use polars::sql::SQLContext;

use crate::lakehouse::TABLES;
use crate::{Error, Result, Store};

impl Store {
    /// Runs one SQL query (Polars SQL) over the store's tables and returns the result.
    ///
    /// Compacted batches and runs not yet compacted (including running ones) are both
    /// visible; [`Store::compact`] only makes queries faster. The tables, with the older name
    /// each also answers to:
    ///
    /// | table | alias | one row per | columns |
    /// |---|---|---|---|
    /// | `runs` | `experiment_runs` | run | run_id, experiment, run_name, parent_run_id, status, attempt, start_time, end_time, duration_s, error, git_commit, git_branch, git_dirty, hostname, user, slurm_job_id |
    /// | `params` | `run_params` | parameter | run_id, key, value (text), value_num (when numeric) |
    /// | `metrics` | `epoch_metrics` | logged value | run_id, key, step, value, finite, logged_at |
    /// | `latest_metrics` | `run_metrics` | run × metric | run_id, key, step, value (at the highest step), min, max, count, non_finite |
    /// | `tags` | `run_tags` | tag | run_id, key, value |
    /// | `datasets` | `dataset_catalog` | run input | run_id, name, digest, source, rows, context |
    /// | `models` | `model_registry` | model version | model, version, created_at, run_id, git_commit, dataset_digests, package_digest, aliases, description |
    /// | `model_events` | `registry_events` | transition | model, at, event, version, alias, from_version, actor, reason |
    /// | `predictions` | | row predicted by a model server (sampled) | time, model, version, role, request_id, row, inputs (JSON), label, class, probabilities, latency_us |
    /// | `feedback` | | label sent back to a model server | time, model, request_id, row, label, version, predicted, correct |
    ///
    /// ```no_run
    /// # let store = kiln_track::Store::open("kiln-store")?;
    /// let best = store.sql(
    ///     "SELECT r.run_id, m.value AS test_accuracy
    ///      FROM runs r JOIN latest_metrics m ON r.run_id = m.run_id
    ///      WHERE r.experiment = 'digits' AND m.key = 'test_accuracy'
    ///      ORDER BY test_accuracy DESC",
    /// )?;
    /// println!("{best}");
    /// # Ok::<(), kiln_track::Error>(())
    /// ```
    pub fn sql(&self, query: &str) -> Result<DataFrame> {
        let mut ctx = SQLContext::new();
        for (name, frame) in self.lazy_tables()? {
            if let Some((_, alias)) = TABLES.iter().find(|(n, _)| *n == name) {
                ctx.register(alias, frame.clone());
            }
            ctx.register(name, frame);
        }
        ctx.execute(query).and_then(LazyFrame::collect).map_err(|e| Error::Sql(e.to_string()))
    }

    /// One whole table (see [`Store::sql`] for the tables).
    pub fn table(&self, name: &str) -> Result<DataFrame> {
        let frame = self
            .lazy_tables()?
            .into_iter()
            .find(|(n, _)| *n == name || TABLES.iter().any(|(t, a)| t == n && *a == name))
            .map(|(_, f)| f)
            .ok_or_else(|| Error::NotFound(format!("table {name:?}")))?;
        frame.collect().map_err(|e| Error::Sql(e.to_string()))
    }
}
