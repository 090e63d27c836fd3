//! Ingestion: four formats, files, directories and globs, streaming, and errors that name
//! the file, line and column.

use std::path::Path;

use kiln_data::polars::prelude::*;
use kiln_data::{Dataset, Format, ScanOptions, scan};

use crate::data_file;

fn penguins() -> DataFrame {
    Dataset::load_csv(data_file("penguins.csv")).unwrap().frame().clone()
}

fn write_as(frame: &DataFrame, path: &Path, format: Format) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut file = std::fs::File::create(path).unwrap();
    let mut frame = frame.clone();
    match format {
        Format::Csv => CsvWriter::new(&mut file).finish(&mut frame).unwrap(),
        Format::Parquet => {
            ParquetWriter::new(&mut file).finish(&mut frame).unwrap();
        }
        Format::Ipc => IpcWriter::new(&mut file).finish(&mut frame).unwrap(),
        Format::NdJson => {
            JsonWriter::new(&mut file).with_json_format(JsonFormat::JsonLines).finish(&mut frame).unwrap()
        }
    }
}

fn err(source: &Path, options: &ScanOptions) -> String {
    match scan(source, options).and_then(|s| s.collect()) {
        Ok(df) => panic!("{} read without error: {df}", source.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_format_reads_back_the_same_frame() {
    let dir = tempfile::tempdir().unwrap();
    let original = penguins();
    for (name, format) in
        [("p.csv", Format::Csv), ("p.parquet", Format::Parquet), ("p.arrow", Format::Ipc), ("p.ndjson", Format::NdJson)]
    {
        let path = dir.path().join(name);
        write_as(&original, &path, format);
        let s = scan(&path, &ScanOptions::default()).unwrap();
        assert_eq!(s.format, format);
        let back = s.collect().unwrap();
        assert_eq!(back.shape(), original.shape(), "{name}");
        assert!(back.equals_missing(&original), "{name}: {back}");
    }
}

#[test]
fn directories_and_globs_read_every_part_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let original = penguins();
    let parts = dir.path().join("parts");
    for i in 0..4 {
        write_as(&original.slice(i * 86, 86), &parts.join(format!("year={i}/part-{i}.parquet")), Format::Parquet);
    }
    std::fs::write(parts.join("_SUCCESS"), "").unwrap();
    std::fs::write(parts.join(".part-0.parquet.crc"), "x").unwrap();
    let all = scan(&parts, &ScanOptions::default()).unwrap();
    assert_eq!(all.files.len(), 4, "markers and hidden files are skipped");
    assert!(all.collect().unwrap().equals_missing(&original), "parts in path order make the whole");

    let pattern = format!("{}/**/part-[0-1].parquet", parts.display());
    let some = scan(&pattern, &ScanOptions::default()).unwrap();
    assert_eq!(some.files.len(), 2);
    assert_eq!(some.collect().unwrap().height(), 172);
    let csvs = format!("{}/*.csv", dir.path().display());
    assert!(err(Path::new(&csvs), &ScanOptions::default()).contains("matches no file"));
}

#[test]
fn the_streaming_engine_gives_the_in_memory_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    let n = 200_000i64;
    let mut frame = df!("k" => (0..n).map(|i| i % 7).collect::<Vec<_>>(), "v" => (0..n).map(|i| i as f64 * 0.5).collect::<Vec<_>>()).unwrap();
    CsvWriter::new(std::fs::File::create(&path).unwrap()).finish(&mut frame).unwrap();
    let query = |s: kiln_data::Scan| {
        s.map(|lf| {
            lf.group_by([col("k")])
                .agg([col("v").sum().alias("total"), len().alias("rows")])
                .sort(["k"], Default::default())
        })
    };
    let streamed = query(scan(&path, &ScanOptions::default()).unwrap()).collect_streaming().unwrap();
    let in_memory = query(scan(&path, &ScanOptions::default()).unwrap()).collect().unwrap();
    assert!(streamed.equals(&in_memory), "{streamed}\n{in_memory}");
    assert_eq!(streamed.height(), 7);
}

#[test]
fn bad_input_names_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let options = ScanOptions::default();

    let missing = d.join("nope.csv");
    let e = err(&missing, &options);
    assert!(e.contains("nope.csv"), "{e}");

    std::fs::write(d.join("sheet.xlsx"), "PK").unwrap();
    let e = err(&d.join("sheet.xlsx"), &options);
    assert!(e.contains("sheet.xlsx") && e.contains("unknown extension `xlsx`"), "{e}");

    std::fs::write(d.join("empty.csv"), "").unwrap();
    let e = err(&d.join("empty.csv"), &options);
    assert!(e.contains("empty.csv") && e.contains("empty"), "{e}");

    std::fs::write(d.join("ragged.csv"), "a,b,c\n1,2,3\n4,5,6\n7,8,9,10\n").unwrap();
    let e = err(&d.join("ragged.csv"), &options);
    assert!(e.contains("ragged.csv, line 4") && e.contains("expected 3 fields") && e.contains("found 4"), "{e}");

    std::fs::write(d.join("latin1.csv"), b"name,n\nok,1\ncaf\xe9,2\n").unwrap();
    let e = err(&d.join("latin1.csv"), &options);
    assert!(e.contains("latin1.csv, line 3") && e.contains("invalid UTF-8") && e.contains("character 4"), "{e}");

    std::fs::write(d.join("typo.csv"), "id,x\n1,10\n2,11\n3,1O\n4,13\n").unwrap();
    let typed = ScanOptions { dtypes: vec![("x".into(), DataType::Int64)], ..ScanOptions::default() };
    let e = err(&d.join("typo.csv"), &typed);
    assert!(
        e.contains("typo.csv, line 4, column `x`") && e.contains("expected an integer") && e.contains("\"1O\""),
        "{e}"
    );

    std::fs::write(d.join("events.ndjson"), "{\"a\": 1}\n{\"a\": 2,}\n").unwrap();
    let e = err(&d.join("events.ndjson"), &options);
    assert!(e.contains("events.ndjson, line 2") && e.contains("invalid JSON"), "{e}");

    // Short records are padded with nulls (Polars' reading), not an error; an error in the
    // query after the scan is reported as itself, not blamed on the file.
    std::fs::write(d.join("short.csv"), "a,b\n1,2\n3\n").unwrap();
    let short = scan(d.join("short.csv"), &options).unwrap().collect().unwrap();
    assert_eq!(short.shape(), (2, 2));
    let e = scan(d.join("short.csv"), &options)
        .unwrap()
        .map(|lf| lf.select([col("zzz")]))
        .collect()
        .unwrap_err()
        .to_string();
    assert!(e.contains("zzz") && !e.contains("fields"), "{e}");

    let mixed = d.join("mixed");
    write_as(&penguins(), &mixed.join("a.csv"), Format::Csv);
    write_as(&penguins(), &mixed.join("b.parquet"), Format::Parquet);
    let e = err(&mixed, &options);
    assert!(e.contains("mix formats") && e.contains("a.csv") && e.contains("b.parquet"), "{e}");
}
