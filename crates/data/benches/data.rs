//! kiln-data benchmarks: validation, pipeline fit + transform, stratified split, hashing, the
//! training loader.
//!
//! `cargo bench -p kiln-data` (1M rows × 20 columns from the synthetic generator; the hashing
//! benchmark writes 1 GiB of files to a temporary directory first).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_data::pipeline::{Columns, HandleUnknown, ImputeStrategy, Pipeline, Step, Transform};
use kiln_data::{
    ColumnSpec, Dataset, HashCache, Schema, SplitFractions, SyntheticSpec, TrainSplit, hash_path, stratified_split,
    synthetic_classification,
};

const ROWS: usize = 1_000_000;

fn data() -> Dataset {
    let spec = SyntheticSpec { rows: ROWS, numeric: 16, categorical: 4, levels: 6, ..SyntheticSpec::default() };
    Dataset::from_frame(synthetic_classification(&spec).expect("synthetic"), "synthetic").expect("dataset")
}

fn validation(c: &mut Criterion) {
    let data = data();
    // 40 checks: 16 numeric columns × (range, not null) + 4 categorical × (allowed set, length).
    let mut columns: Vec<ColumnSpec> =
        (0..16).map(|j| ColumnSpec::number(format!("num_{j}")).range(-50.0, 50.0)).collect();
    columns.extend(
        (0..4).map(|j| {
            ColumnSpec::category(format!("cat_{j}"), (0..6).map(|l| format!("l{l}"))).length(Some(2), Some(2))
        }),
    );
    let schema = Schema::new(columns);
    let mut group = c.benchmark_group("data/validate");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    group.bench_function("1M rows × 20 columns, 40 checks", |b| {
        b.iter(|| {
            let report = schema.check(black_box(&data)).expect("check");
            assert!(report.is_valid());
        })
    });
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let data = data();
    let train = TrainSplit::all_rows_for_final_fit(&data);
    let pipeline = Pipeline::new()
        .exclude("label")
        .step(Step::new("numbers", Columns::Numeric).impute(ImputeStrategy::Mean, false).then(Transform::Standard))
        .step(
            Step::new("labels", Columns::Categorical)
                .impute(ImputeStrategy::MostFrequent, false)
                .then(Transform::OneHot { handle_unknown: HandleUnknown::Ignore, min_frequency: None }),
        );
    let mut group = c.benchmark_group("data/pipeline");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    group.bench_function("fit + transform 1M rows × 20 columns (impute, scale, one-hot)", |b| {
        b.iter(|| {
            let fitted = pipeline.fit(black_box(&train)).expect("fit");
            let x = fitted.transform(data.frame(), "synthetic").expect("transform");
            assert_eq!(x.ncols(), 16 + 4 * 6);
        })
    });
    group.finish();
}

fn split(c: &mut Criterion) {
    let labels: Vec<u32> = (0..ROWS as u32).map(|i| i.wrapping_mul(2_654_435_761) % 10).collect();
    let mut group = c.benchmark_group("data/split");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("stratified 1M rows, 10 classes", |b| {
        b.iter(|| stratified_split(black_box(&labels), SplitFractions::default(), 42).expect("split"))
    });
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let piece: Vec<u8> = (0..(128u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    for i in 0..8 {
        std::fs::write(dir.path().join(format!("part-{i}.bin")), &piece).expect("write");
    }
    let mut group = c.benchmark_group("data/hash");
    group.throughput(Throughput::Bytes(8 * piece.len() as u64));
    group.sample_size(10);
    group.bench_function("1 GiB in 8 files (page cache), no cache", |b| {
        b.iter(|| hash_path(black_box(dir.path()), None).expect("hash"))
    });
    let mut cache = HashCache::in_memory();
    hash_path(dir.path(), Some(&mut cache)).expect("warm");
    group.bench_function("1 GiB in 8 files, unchanged, with the stat cache", |b| {
        b.iter(|| hash_path(black_box(dir.path()), Some(&mut cache)).expect("hash"))
    });
    group.finish();
}

/// Items of one epoch of `loader`, every batch consumed as it comes.
fn epoch_items<S: kiln_data::Source>(loader: &kiln_data::Loader<S>) -> usize {
    loader.epoch(1, 1, 0).map(|batch| black_box(batch.expect("batch")).items.len()).sum()
}

/// A source whose decode costs ~50 µs of CPU per item (an image decode, say), read through the
/// loader with 0, 1 and 2 workers: batches of 32, one epoch of 2,048 items.
fn loader(c: &mut Criterion) {
    use kiln_data::{Loader, Order, SplitMix64, from_fn};
    use std::time::{Duration, Instant};
    const ITEMS: usize = 2048;
    let source = from_fn("decode-50us", ITEMS, "bench", |index, rng: &mut SplitMix64| {
        let until = Instant::now() + Duration::from_micros(50);
        let mut acc = index as u64 ^ rng.next_u64();
        while Instant::now() < until {
            acc = acc.rotate_left(7).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        Ok(acc)
    });
    let source = std::sync::Arc::new(source);
    let mut group = c.benchmark_group("data/loader");
    group.throughput(Throughput::Elements(ITEMS as u64));
    group.sample_size(10);
    for workers in [0, 1, 2] {
        let loader = Loader::new(std::sync::Arc::clone(&source), 32).order(Order::Shuffle).workers(workers);
        group.bench_function(format!("2048 items of 50 µs, batches of 32, {workers} workers"), |b| {
            b.iter(|| assert_eq!(epoch_items(&loader), ITEMS))
        });
    }
    group.finish();
}

/// PCAM's layout (96×96×3 uint8 patches, uint8 labels) in an NPY pair on disk, read through
/// the loader as f32 images with 0, 1 and 2 workers (items/s; the file is in the page cache
/// after the first pass, so this measures decoding, not the disk).
fn npy(c: &mut Criterion) {
    use kiln_data::npy::{NpyArray, NpyPair};
    use kiln_data::{Loader, Order};
    const ITEMS: usize = 2048;
    const ITEM: usize = 96 * 96 * 3;
    let dir = tempfile::tempdir().expect("temporary directory");
    // The .npy layout by hand: magic, version 1.0, the header padded to 64 bytes, the data.
    let write = |name: &str, shape: &str, data: &[u8]| {
        let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write the bench array");
        path
    };
    let pixels: Vec<u8> = (0..ITEMS * ITEM).map(|i| (i % 251) as u8).collect();
    let labels: Vec<u8> = (0..ITEMS).map(|i| (i % 2) as u8).collect();
    let x = NpyArray::open(write("x.npy", &format!("({ITEMS}, 96, 96, 3)"), &pixels)).expect("x.npy");
    let y = NpyArray::open(write("y.npy", &format!("({ITEMS}, 1, 1, 1)"), &labels)).expect("y.npy");
    let pair = std::sync::Arc::new(NpyPair::<f32, u8>::new(x, y).expect("pair"));
    let mut group = c.benchmark_group("data/npy");
    group.throughput(Throughput::Elements(ITEMS as u64));
    group.sample_size(10);
    for workers in [0, 1, 2] {
        let loader = Loader::new(std::sync::Arc::clone(&pair), 64).order(Order::Shuffle).workers(workers);
        group.bench_function(
            format!("{ITEMS} PCAM patches (96x96x3 u8 -> f32), batches of 64, {workers} workers"),
            |b| b.iter(|| assert_eq!(epoch_items(&loader), ITEMS)),
        );
    }
    group.finish();
}

criterion_group!(benches, validation, pipeline, split, hashing, loader, npy);
criterion_main!(benches);
