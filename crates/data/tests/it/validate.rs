use kiln_data::{ColumnSpec, Dataset, Error, Schema};

use crate::{data_file, digits_schema};

/// Writes digits.csv with some cells replaced: (data row, column index, new text).
fn corrupted_digits(edits: &[(usize, usize, &str)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let text = std::fs::read_to_string(data_file("digits.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (row, col, value) in edits {
        let mut cells: Vec<String> = lines[*row].split(',').map(str::to_string).collect();
        cells[*col] = value.to_string();
        lines[*row] = cells.join(",");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("digits-corrupted.csv");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (dir, path)
}

#[test]
fn shipped_digits_pass_the_schema() {
    let data = Dataset::load_csv(data_file("digits.csv")).unwrap();
    let report = digits_schema().validate(&data).unwrap();
    assert_eq!(report.rows, 1797);
    assert_eq!(data.column_names().len(), 65);
    assert!(report.is_valid());
}

#[test]
fn out_of_range_pixel_is_reported_with_row_line_and_column() {
    // Data row 100 is file line 101; column 28 is pixel_3_4.
    let (_dir, path) = corrupted_digits(&[(100, 28, "17")]);
    let data = Dataset::load_csv(&path).unwrap();
    let err = digits_schema().validate(&data).unwrap_err();
    let Error::Validation { source_name, violations, total } = &err else { panic!("unexpected error {err}") };
    assert_eq!(*total, 1);
    assert_eq!(source_name, &path.display().to_string());
    assert_eq!((violations[0].row, violations[0].line, violations[0].column.as_str()), (100, Some(101), "pixel_3_4"));
    let message = err.to_string();
    for part in
        ["digits-corrupted.csv", "row 100", "line 101", "pixel_3_4", "expected an integer in 0..=16", "found 17"]
    {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
}

#[test]
fn text_in_a_numeric_column_and_bad_labels_are_all_counted() {
    let (_dir, path) = corrupted_digits(&[(5, 0, "abc"), (7, 64, "12"), (9, 3, "2.5")]);
    let data = Dataset::load_csv(&path).unwrap();
    let report = digits_schema().check(&data).unwrap();
    assert_eq!(report.total, 3);
    let found: Vec<(usize, &str, &str)> =
        report.violations.iter().map(|v| (v.row, v.column.as_str(), v.found.as_str())).collect();
    assert_eq!(found, vec![(5, "pixel_0_0", "\"abc\""), (7, "label", "12"), (9, "pixel_0_3", "2.5")]);
    assert_eq!(report.bad_rows.iter().copied().collect::<Vec<_>>(), vec![4, 6, 8]);
}

#[test]
fn missing_values_and_categories_in_penguins() {
    let data = Dataset::load_csv(data_file("penguins.csv")).unwrap();
    assert_eq!(data.height(), 344);
    let schema = Schema::new(vec![
        ColumnSpec::category("species", ["Adelie", "Chinstrap", "Gentoo"]),
        ColumnSpec::category("island", ["Biscoe", "Dream", "Torgersen"]),
        ColumnSpec::number("bill_length_mm").range(30.0, 60.0),
        ColumnSpec::category("sex", ["female", "male"]),
    ]);
    let report = schema.check(&data).unwrap();
    // Rows 4 and 272 lack every measurement (and sex); 9 more lack only sex.
    assert_eq!(report.total, 2 + 11);
    assert_eq!(report.violations[0].row, 4);
    assert_eq!(report.violations[0].found, "a missing value");
    let nullable = Schema::new(vec![
        ColumnSpec::number("bill_length_mm").nullable(),
        ColumnSpec::category("sex", ["female", "male"]).nullable(),
    ]);
    assert!(nullable.validate(&data).is_ok());

    let err = data.to_matrix(&["bill_length_mm".to_string()]).unwrap_err().to_string();
    assert!(err.contains("row 4") && err.contains("bill_length_mm") && err.contains("missing"), "{err}");
    let err = data.to_matrix(&["island".to_string()]).unwrap_err().to_string();
    assert!(err.contains("island") && err.contains("expected a number"), "{err}");
    let err = data.to_matrix(&["flipper".to_string()]).unwrap_err().to_string();
    assert!(err.contains("no column `flipper`") && err.contains("flipper_length_mm"), "{err}");
}

#[test]
fn unreadable_files_name_the_path() {
    let err = Dataset::load_csv("/nonexistent/kiln.csv").unwrap_err().to_string();
    assert!(err.contains("/nonexistent/kiln.csv"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ragged.csv");
    std::fs::write(&path, "a,b\n1,2\n3,4,5\n").unwrap();
    let err = Dataset::load_csv(&path).unwrap_err().to_string();
    assert!(err.contains("ragged.csv") && err.contains("cannot parse CSV"), "{err}");
}

#[test]
fn quoted_files_report_rows_but_no_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quoted.csv");
    std::fs::write(&path, "name,x\n\"a\nb\",1\nc,99\n").unwrap();
    let data = Dataset::load_csv(&path).unwrap();
    let report = Schema::new(vec![ColumnSpec::integer("x", 0, 10)]).check(&data).unwrap();
    assert_eq!((report.violations[0].row, report.violations[0].line), (2, None));
}

#[test]
fn the_dataset_hash_is_the_blake3_of_the_file() {
    let path = data_file("breast_cancer.csv");
    let data = Dataset::load_csv(&path).unwrap();
    assert_eq!(data.hash(), blake3::hash(&std::fs::read(&path).unwrap()).to_hex().as_str());
    let (_dir, other) = corrupted_digits(&[(1, 1, "1")]);
    assert_ne!(Dataset::load_csv(other).unwrap().hash(), Dataset::load_csv(data_file("digits.csv")).unwrap().hash());
}

#[test]
fn every_violation_is_counted_but_only_the_first_are_detailed() {
    // 30 bad rows across two columns, in reverse order of columns to check the row-order merge.
    let edits: Vec<(usize, usize, &str)> = (1..=15).flat_map(|r| [(r * 10, 63, "-1"), (r * 10 + 1, 2, "99")]).collect();
    let (_dir, path) = corrupted_digits(&edits);
    let data = Dataset::load_csv(&path).unwrap();
    let report = digits_schema().check(&data).unwrap();
    assert_eq!(report.total, 30);
    assert_eq!(report.bad_rows.len(), 30);
    assert_eq!(report.violations.len(), kiln_data::MAX_REPORTED_VIOLATIONS);
    let rows: Vec<usize> = report.violations.iter().map(|v| v.row).collect();
    let mut sorted = rows.clone();
    sorted.sort_unstable();
    assert_eq!(rows, sorted);
    assert_eq!((rows[0], report.violations[0].column.as_str()), (10, "pixel_7_7"));
    assert_eq!((rows[1], report.violations[1].column.as_str()), (11, "pixel_0_2"));
}

mod lazy {
    use kiln_data::polars::prelude::*;
    use kiln_data::{ColumnSpec, Dataset, ExtraColumns, Schema};

    use crate::data_file;

    fn fixture(name: &str) -> std::path::PathBuf {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        std::path::PathBuf::from(dir).join("tests/fixtures").join(name)
    }

    #[test]
    fn a_schema_file_in_toml_or_json_checks_penguins() {
        let schema = Schema::load(fixture("penguins.schema.toml")).unwrap();
        assert_eq!(schema.columns.len(), 8);
        let penguins = Dataset::load_csv(data_file("penguins.csv")).unwrap();
        let report = schema.check(&penguins).unwrap();
        assert!(report.is_valid(), "{}", report.summary());
        // The same schema as JSON reads back equal.
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("penguins.schema.json");
        std::fs::write(&json, serde_json::to_string_pretty(&schema).unwrap()).unwrap();
        assert_eq!(Schema::load(&json).unwrap(), schema);
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[[columns]]\nname = 3\n").unwrap();
        let e = Schema::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("line 2"), "{e}");
    }

    fn people() -> Dataset {
        let frame = df!(
            "id" => [1i64, 2, 3, 3, 5, 6],
            "email" => ["a@lab.org", "b@lab.org", "nope", "c@lab.org", "d@lab.org", "e@lab.org"],
            "name" => ["Ada", "Grace", "Barbara", "Katherine-Johnson-The-Great", "Mary", "Hedy"],
            "age" => [Some(36i64), Some(85), Some(41), None, Some(250), Some(85)],
            "site" => ["oslo", "oslo", "lima", "lima", "mars", "oslo"],
            "visit" => [1i64, 1, 1, 2, 1, 1],
            "started" => [2001i64, 1999, 2000, 2003, 2010, 1980],
            "ended" => [2005i64, 1998, 2004, 2004, 2011, 1970],
            "notes" => ["", "", "", "", "", ""],
        )
        .unwrap();
        Dataset::from_frame(frame, "people.csv").unwrap()
    }

    fn people_schema() -> Schema {
        Schema::new(vec![
            ColumnSpec::integer("id", 1, 1000).unique(),
            ColumnSpec::text("email").matches(r"^[^@\s]+@[^@\s]+\.[a-z]+$"),
            ColumnSpec::text("name").length(Some(2), Some(20)),
            ColumnSpec::integer("age", 0, 130),
            ColumnSpec::category("site", ["oslo", "lima"]),
            ColumnSpec::integer("visit", 1, 10),
            ColumnSpec::integer("started", 1900, 2100),
            ColumnSpec::integer("ended", 1900, 2100),
        ])
        .check_expr("ends_after_start", "ended >= started")
        .unique_together(&["site", "visit"])
        .rows(Some(10), None)
        .extra_columns(ExtraColumns::Reject)
    }

    #[test]
    fn every_failure_is_found_in_one_check() {
        let report = people_schema().check(&people()).unwrap();
        let cases = report.failure_cases().unwrap();
        let get = |c: &str| -> Vec<String> {
            cases.column(c).unwrap().as_materialized_series().iter().map(|v| v.str_value().to_string()).collect()
        };
        let rows: Vec<String> = get("row");
        let checks: Vec<String> = get("check");
        let columns: Vec<String> = get("column");
        let got: Vec<(String, String, String)> =
            rows.into_iter().zip(columns).zip(checks).map(|((r, c), k)| (r, c, k)).collect();
        let want: Vec<(&str, &str, &str)> = vec![
            ("null", "notes", "extra_column"),
            ("null", "null", "row_count"),
            ("1", "null", "unique_together:site+visit"),
            ("2", "null", "expr:ends_after_start"),
            ("2", "null", "unique_together:site+visit"),
            ("3", "email", "str_matches"),
            ("3", "id", "unique"),
            ("4", "age", "not_null"),
            ("4", "id", "unique"),
            ("4", "name", "str_length"),
            ("5", "age", "in_range"),
            ("5", "site", "isin"),
            ("6", "null", "expr:ends_after_start"),
            ("6", "null", "unique_together:site+visit"),
        ];
        let mut got_sorted = got.clone();
        got_sorted.sort();
        let mut want_sorted: Vec<(String, String, String)> =
            want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
        want_sorted.sort();
        assert_eq!(got_sorted, want_sorted, "{cases}");
        assert_eq!(report.total, 14);
        assert_eq!(report.bad_rows.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
        let summary = report.summary();
        assert!(summary.contains("6 rows, 6 failing row(s), 14 failure(s)"), "{summary}");
        assert!(summary.contains("age in_range: 1 (e.g. row 5: 250)"), "{summary}");
        assert!(summary.contains("(table) row_count: 1 (e.g. 6 rows, expected 10..=)"), "{summary}");
        let expr = report.failures.iter().find(|f| f.check == "expr:ends_after_start").unwrap();
        assert!(expr.found.contains("ended=1998") && expr.found.contains("started=1999"), "{expr:?}");
    }

    #[test]
    fn integers_are_checked_exactly_and_text_rules_apply_to_numbers() {
        let big = 9_007_199_254_740_992i64; // 2^53: the next integer is not an f64
        let frame = df!("id" => [big, big + 1, i64::MAX], "zip" => [12345i64, 123, 54321]).unwrap();
        let data = Dataset::from_frame(frame, "ids.csv").unwrap();
        let schema = Schema::new(vec![
            ColumnSpec::integer("id", 0, i64::MAX - 1).unique(),
            ColumnSpec::of("zip", kiln_data::ColumnKind::Integer { min: None, max: None }).matches(r"^\d{5}$"),
        ]);
        let report = schema.check(&data).unwrap();
        let got: Vec<(Option<usize>, Option<String>, String)> =
            report.failures.iter().map(|f| (f.row, f.column.clone(), f.check.clone())).collect();
        assert_eq!(
            got,
            [(Some(2), Some("zip".into()), "str_matches".into()), (Some(3), Some("id".into()), "in_range".into())],
            "2^53 and 2^53 + 1 are different ids; i64::MAX is above i64::MAX - 1"
        );
    }

    #[test]
    fn the_first_violations_are_the_first_rows_whatever_the_column() {
        let n = 200;
        let a: Vec<i64> = (0..n).map(|r| if r >= 10 { 99 } else { 1 }).collect();
        let b: Vec<i64> = (0..n).map(|r| if r == 0 { 99 } else { 1 }).collect();
        let data = Dataset::from_frame(df!("a" => a, "b" => b).unwrap(), "t.csv").unwrap();
        let schema = Schema::new(vec![ColumnSpec::integer("a", 0, 10), ColumnSpec::integer("b", 0, 10)]);
        let report = schema.check(&data).unwrap();
        assert_eq!(report.total, 191);
        assert_eq!((report.violations[0].row, report.violations[0].column.as_str()), (1, "b"));
    }

    #[test]
    fn split_valid_quarantines_with_reasons_and_writes_parquet() {
        let mut schema = people_schema();
        schema.rows = None;
        schema.unique_together.clear();
        schema.extra_columns = ExtraColumns::Drop;
        let (valid, quarantine) = schema.split_valid(&people()).unwrap();
        assert_eq!(valid.height(), 1, "only Ada passes everything");
        assert_eq!(valid.column_names().len(), 8, "the extra `notes` column is dropped");
        let q = &quarantine.frame;
        assert_eq!(q.height(), 5);
        let rows: Vec<u64> = q.column("_row").unwrap().u64().unwrap().iter().flatten().collect();
        assert_eq!(rows, [2, 3, 4, 5, 6]);
        let reasons: Vec<String> =
            q.column("_reasons").unwrap().str().unwrap().iter().map(|s| s.unwrap().to_string()).collect();
        assert!(reasons[0].contains("expr:ends_after_start"), "{reasons:?}");
        assert!(reasons[2].contains("age not_null") && reasons[2].contains("name str_length"), "{reasons:?}");
        assert_eq!(valid.height() + q.height(), people().height(), "nothing is dropped silently");

        // The quarantine file is plain Parquet, read back by arrow-rs.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quarantine.parquet");
        quarantine.write_parquet(&path).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        use parquet::file::reader::FileReader;
        let meta = reader.metadata();
        assert_eq!(meta.file_metadata().num_rows(), 5);
        let names: Vec<String> =
            meta.file_metadata().schema_descr().columns().iter().map(|c| c.name().to_string()).collect();
        assert!(names.contains(&"_reasons".to_string()) && names.contains(&"email".to_string()), "{names:?}");
    }

    #[test]
    fn coercion_and_bad_checks() {
        let frame = df!("n" => ["1", " 2.5", "x"], "i" => [" 3", "3.0", "4"], "k" => ["a", "b", "c"]).unwrap();
        let data = Dataset::from_frame(frame, "n.csv").unwrap();
        let mut schema = Schema::new(vec![
            ColumnSpec::number("n"),
            ColumnSpec::of("i", kiln_data::ColumnKind::Integer { min: None, max: None }),
        ]);
        schema.coerce = true;
        let (valid, quarantine) = schema.split_valid(&data).unwrap();
        let n: Vec<Option<f64>> = valid.frame().column("n").unwrap().f64().unwrap().iter().collect();
        assert_eq!(n, [Some(1.0), Some(2.5)], "values that passed are converted, never nulled");
        let i: Vec<Option<i64>> = valid.frame().column("i").unwrap().i64().unwrap().iter().collect();
        assert_eq!(i, [Some(3), Some(3)]);
        assert_eq!(quarantine.report.failures[0].check, "dtype");
        let e = Schema::new(vec![]).check_expr("broken", "n >>> 2").check(&data).unwrap_err().to_string();
        assert!(e.contains("check `broken`"), "{e}");
        let e = Schema::new(vec![]).check_expr("not_bool", "k").check(&data).unwrap_err().to_string();
        assert!(e.contains("not_bool"), "{e}");
    }
}
