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
