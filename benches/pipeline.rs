//! Run with: cargo bench --bench pipeline
//!
//! Throughput of the quickstart's stages on the shipped digits data: CSV load, schema
//! validation, stratified split, scaler fit, and batched prediction from a model package.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kiln::data::{ColumnSpec, Dataset, LabelEncoder, Schema, SplitFractions, StandardScaler, stratified_split};
use kiln::train::{DeviceSpec, Examples, ModelConfig, ModelPackage, PackageSpec, TrainConfig, train};

/// data/digits.csv of this checkout (`cargo bench` sets CARGO_MANIFEST_DIR at run time).
fn digits() -> String {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    format!("{root}/data/digits.csv")
}

fn features() -> Vec<String> {
    (0..8).flat_map(|r| (0..8).map(move |c| format!("pixel_{r}_{c}"))).collect()
}

fn schema() -> Schema {
    let mut columns: Vec<ColumnSpec> = features().iter().map(|f| ColumnSpec::integer(f.as_str(), 0, 16)).collect();
    columns.push(ColumnSpec::integer("label", 0, 9));
    Schema::new(columns)
}

fn data_stages(c: &mut Criterion) {
    let path = digits();
    let data = Dataset::load_csv(&path).expect("digits");
    let labels = data.to_strings("label").expect("labels");
    let raw = data.to_matrix(&features()).expect("matrix");
    c.bench_function("load_csv digits (1797x65)", |b| b.iter(|| Dataset::load_csv(black_box(&path))));
    let schema = schema();
    c.bench_function("validate digits (115k cells)", |b| b.iter(|| schema.check(black_box(&data))));
    c.bench_function("stratified_split digits", |b| {
        b.iter(|| stratified_split(black_box(&labels), SplitFractions::default(), 42))
    });
    c.bench_function("scaler fit digits", |b| b.iter(|| StandardScaler::fit(black_box(raw.view()), &features())));
}

fn predict(c: &mut Criterion) {
    let path = digits();
    let data = Dataset::load_csv(&path).expect("digits");
    let labels = data.to_strings("label").expect("labels");
    let raw = data.to_matrix(&features()).expect("matrix");
    let encoder = LabelEncoder::fit(&labels);
    let scaler = StandardScaler::fit(raw.view(), &features()).expect("scaler");
    let mut x = raw.clone();
    scaler.transform(&mut x).expect("transform");
    let examples = Examples::new(x.mapv(|v| v as f32), encoder.encode(&labels).expect("encode")).expect("examples");
    let config = TrainConfig { epochs: 2, device: DeviceSpec::Cpu, ..TrainConfig::default() };
    let model = ModelConfig::mlp(examples.x.ncols(), &[128, 64], encoder.len());
    let trained = train(&config, &model, &examples, None, None, &mut ()).expect("train");
    let dir = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    ModelPackage::new(
        &trained,
        PackageSpec {
            name: "bench".into(),
            train_config: config,
            features: features(),
            input_schema: Schema::new(schema().columns[..64].to_vec()),
            scaler: Some(scaler),
            pipeline: None,
            labels: encoder,
            label_column: "label".into(),
            metrics: Default::default(),
            lineage: Default::default(),
        },
    )
    .expect("package")
    .save(&dir)
    .expect("save");
    let predictor = ModelPackage::load(&dir).expect("load");
    for rows in [1usize, 64, 1024] {
        let batch = raw.slice(ndarray::s![..rows, ..]).to_owned();
        c.bench_function(&format!("predict raw rows, batch {rows}"), |b| {
            b.iter(|| predictor.predict(black_box(batch.view())))
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, data_stages, predict);
criterion_main!(benches);
