//! Run with: cargo bench --bench train
//!
//! Training throughput (rows/s) on burn's CPU `Flex` backend for the shapes of the comparison
//! harness: MLP 64→256→256→10 at batch 64, 64→512→512→10 at batch 256, the digits CNN; and
//! prediction latency of a loaded classifier at batch 1 and 64. One "iteration" trains one
//! epoch over 4,096 synthetic rows with Adam (all loop overheads included: batch selection,
//! loss readback for the NaN guard, gradient-norm check).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln::data::SplitMix64;
use kiln::train::{Activation, CnnConfig, CnnHead, DeviceSpec, Examples, ModelConfig, TrainConfig, train};
use ndarray::Array2;

const ROWS: usize = 4096;

fn examples(features: usize) -> Examples {
    let mut rng = SplitMix64::new(1);
    let x = Array2::from_shape_fn((ROWS, features), |_| rng.next_f64() as f32);
    let y = (0..ROWS).map(|i| i % 10).collect();
    Examples::new(x, y).expect("examples")
}

fn training(c: &mut Criterion) {
    let mut group = c.benchmark_group("train epoch");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROWS as u64));
    let cnn = ModelConfig::Cnn(CnnConfig {
        height: 8,
        width: 8,
        channels: 1,
        classes: 10,
        filters: vec![16, 32],
        dense: vec![64],
        head: CnnHead::Flatten,
        activation: Activation::Relu,
        dropout: 0.0,
        batch_norm: false,
    });
    let cases = [
        ("mlp 64-256-256-10", 64, ModelConfig::mlp(64, &[256, 256], 10)),
        ("mlp 64-512-512-10", 256, ModelConfig::mlp(64, &[512, 512], 10)),
        ("cnn digits 8x8 16-32", 64, cnn),
    ];
    let data = examples(64);
    for (name, batch, model) in cases {
        let config = TrainConfig { epochs: 1, batch_size: batch, device: DeviceSpec::Cpu, ..TrainConfig::default() };
        group.bench_function(BenchmarkId::new(name, format!("batch {batch}")), |b| {
            b.iter(|| train(&config, &model, &data, None, None, &mut ()).expect("train"))
        });
    }
    group.finish();
}

fn inference(c: &mut Criterion) {
    let data = examples(64);
    let model = ModelConfig::mlp(64, &[256, 256], 10);
    let config = TrainConfig { epochs: 1, device: DeviceSpec::Cpu, ..TrainConfig::default() };
    let classifier = train(&config, &model, &data, None, None, &mut ()).expect("train").classifier().expect("load");
    let mut group = c.benchmark_group("predict mlp 64-256-256-10");
    for batch in [1usize, 64] {
        let x = data.x.slice(ndarray::s![0..batch, ..]).to_owned();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("batch {batch}")), |b| {
            b.iter(|| classifier.predict_proba(black_box(x.view())).expect("predict"))
        });
    }
    group.finish();
}

criterion_group!(benches, training, inference);
criterion_main!(benches);
