//! SQL over the lakehouse tables, with Polars.

use polars::prelude::{DataFrame, LazyFrame, PlRefPath, ScanArgsParquet};
use polars::sql::SQLContext;

use crate::lakehouse::TABLES;
use crate::{Error, Result, Store};

impl Store {
    /// Refreshes the lakehouse tables and runs one SQL query over them.
    ///
    /// The tables are named as in [`TABLES`]: `experiment_runs`, `run_params`, `run_metrics`,
    /// `epoch_metrics` and `model_registry` (see [`Store::refresh_tables`] for their columns).
    ///
    /// ```no_run
    /// # let store = kiln_track::Store::open("kiln-store")?;
    /// let best = store.sql(
    ///     "SELECT r.run_id, m.value AS test_accuracy
    ///      FROM experiment_runs r JOIN run_metrics m ON r.run_id = m.run_id
    ///      WHERE r.experiment = 'digits' AND m.metric = 'test_accuracy'
    ///      ORDER BY test_accuracy DESC",
    /// )?;
    /// println!("{best}");
    /// # Ok::<(), kiln_track::Error>(())
    /// ```
    pub fn sql(&self, query: &str) -> Result<DataFrame> {
        self.refresh_tables()?;
        self.sql_without_refresh(query)
    }

    /// Runs a query over the tables as they were last written by [`Store::refresh_tables`].
    pub fn sql_without_refresh(&self, query: &str) -> Result<DataFrame> {
        let mut ctx = SQLContext::new();
        for table in TABLES {
            let path = self.table_path(table);
            let path = PlRefPath::try_from_path(&path).map_err(|e| Error::Sql(format!("{}: {e}", path.display())))?;
            let args = ScanArgsParquet { glob: false, ..Default::default() };
            let frame = LazyFrame::scan_parquet(path, args).map_err(|e| Error::Sql(e.to_string()))?;
            ctx.register(table, frame);
        }
        ctx.execute(query).and_then(LazyFrame::collect).map_err(|e| Error::Sql(e.to_string()))
    }
}
