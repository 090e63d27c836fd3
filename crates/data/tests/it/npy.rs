//! NPY and NPZ files written by NumPy (tests/fixtures/npy/make.py): values, types, byte
//! orders, archives, the bad-file errors, and exact resume of a loader over them.

use std::path::PathBuf;

use kiln_data::npy::{DType, NpyArray, NpyPair, NpySource, Npz};
use kiln_data::{Batch, Loader, Order, Source, SplitMix64};

fn fixture(name: &str) -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    PathBuf::from(crate_dir).join("tests/fixtures/npy").join(name)
}

fn open(name: &str) -> NpyArray {
    NpyArray::open(fixture(name)).unwrap()
}

fn err(name: &str) -> String {
    NpyArray::open(fixture(name)).unwrap_err().to_string()
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

/// The value NumPy put at a flat position of `images_u8.npy`.
fn pixel(flat: usize) -> u8 {
    (flat % 251) as u8
}

#[test]
fn uint8_images_and_labels_read_as_numpy_wrote_them() {
    let x = open("images_u8.npy");
    assert_eq!((x.dtype(), x.shape(), x.item_shape()), (DType::U8, &[10, 4, 4, 3][..], &[4, 4, 3][..]));
    let item = x.item::<u8>(7).unwrap();
    assert_eq!(item.shape(), [4, 4, 3]);
    assert_eq!(item[[2, 1, 0]], pixel(7 * 48 + 2 * 12 + 3));
    // Widened exactly to f32, and as a pair with the PCAM-shaped labels [N, 1, 1, 1].
    let pair = NpyPair::<f32, u8>::new(x, open("labels_u8.npy")).unwrap();
    let (image, label) = pair.get(3, &mut SplitMix64::new(0)).unwrap();
    assert_eq!(image[[0, 0, 0]], f32::from(pixel(3 * 48)));
    assert_eq!(label, 1);
    assert_eq!(pair.len(), 10);
}

#[test]
fn every_supported_type_and_byte_order_decodes_exactly() {
    let want: Vec<f64> = expected()["rows_f32"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for name in ["rows_f32.npy", "rows_f64_be.npy", "rows_v2.npy"] {
        let a = open(name);
        assert_eq!(a.shape(), [7, 5], "{name}");
        let got: Vec<f64> = (0..7).flat_map(|i| a.item::<f64>(i).unwrap().into_iter()).collect();
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(open("rows_f64_be.npy").dtype(), DType::F64);
    let i16s = open("ints_i16.npy");
    assert_eq!(i16s.item::<i64>(0).unwrap().iter().copied().collect::<Vec<_>>(), [-32768, 32767]);
    assert_eq!(i16s.item::<f32>(2).unwrap().iter().copied().collect::<Vec<_>>(), [7.0, -7.0]);
    let big = open("ints_i64_be.npy");
    assert_eq!(big.item::<i64>(0).unwrap().iter().copied().collect::<Vec<_>>(), [-(1i64 << 40), (1i64 << 40) + 3]);
    let flags = open("flags.npy");
    let got: Vec<u8> = (0..5).map(|i| flags.scalar::<u8>(i).unwrap()).collect();
    assert_eq!((flags.dtype(), got), (DType::Bool, vec![1, 0, 1, 1, 0]));
    let halves = open("halves_f16.npy");
    let want = expected()["halves"].clone();
    for (i, w) in want.as_array().unwrap().iter().enumerate() {
        let got = halves.scalar::<f32>(i).unwrap();
        match w.as_f64() {
            Some(v) => assert_eq!(f64::from(got).to_bits(), v.to_bits(), "half {i}: {got} vs {v}"),
            None => assert_eq!(got.to_string(), w.as_str().unwrap(), "half {i}"),
        }
    }
}

#[test]
fn narrowing_conversions_are_refused_naming_both_types() {
    let e = NpySource::<u8>::new(open("rows_f32.npy")).unwrap_err().to_string();
    assert!(e.contains("rows_f32.npy") && e.contains("float32") && e.contains("uint8"), "{e}");
    let e = NpySource::<f32>::new(open("ints_i64_be.npy")).unwrap_err().to_string();
    assert!(e.contains("int64") && e.contains("float32"), "{e}");
    let e = open("images_u8.npy").scalar::<u8>(0).unwrap_err().to_string();
    assert!(e.contains("not single values"), "{e}");
}

#[test]
fn bad_files_are_errors_naming_the_file_and_the_field() {
    let e = err("fortran.npy");
    assert!(e.contains("fortran.npy") && e.contains("'fortran_order' is True"), "{e}");
    let e = err("complex.npy");
    assert!(e.contains("complex.npy") && e.contains("'descr'") && e.contains("<c8"), "{e}");
    let e = err("structured.npy");
    assert!(e.contains("structured.npy") && e.contains("structured"), "{e}");
    let e = err("truncated.npy");
    assert!(e.contains("truncated.npy") && e.contains("truncated") && e.contains("140 data bytes"), "{e}");
    let e = err("scalar.npy");
    assert!(e.contains("'shape' is ()"), "{e}");
    let e = err("not_npy.npy");
    assert!(e.contains("not_npy.npy") && e.contains("magic"), "{e}");
    let e = err("missing.npy");
    assert!(e.contains("missing.npy"), "{e}");
    let e = NpyPair::<u8, u8>::new(open("images_u8.npy"), open("labels_short.npy")).err().unwrap().to_string();
    assert!(e.contains("labels_short.npy") && e.contains("9 labels for the 10 items"), "{e}");
    let e = open("images_u8.npy").item::<u8>(10).unwrap_err().to_string();
    assert!(e.contains("item 10") && e.contains("10 items"), "{e}");
}

#[test]
fn npz_members_read_stored_and_compressed() {
    for name in ["pair.npz", "pair_compressed.npz"] {
        let npz = Npz::open(fixture(name)).unwrap();
        let x = npz.array("x").unwrap();
        assert_eq!(x.shape(), [10, 4, 4, 3], "{name}");
        assert_eq!(x.item::<u8>(9).unwrap()[[3, 3, 2]], pixel(9 * 48 + 47), "{name}");
        let y = npz.array("y").unwrap();
        assert_eq!((0..10).map(|i| y.scalar::<u8>(i).unwrap()).collect::<Vec<_>>(), [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
        let e = npz.array("z").unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("no member \"z\""), "{e}");
        assert!(x.name().contains(&format!("{name}[x]")), "{}", x.name());
    }
    let compressed = Npz::open(fixture("pair_compressed.npz")).unwrap();
    assert_eq!(compressed.names(), ["rows", "x", "y"]);
    let e = Npz::open(fixture("rows_f32.npy")).unwrap_err().to_string();
    assert!(e.contains("rows_f32.npy") && e.contains("not a readable .npz"), "{e}");
}

/// Resuming at (epoch, batch) yields exactly the batches an uninterrupted loader gives from
/// there, for every order, with 0 and 2 workers.
#[test]
fn a_resumed_loader_over_arrays_matches_the_uninterrupted_one() {
    let npz = Npz::open(fixture("pair_compressed.npz")).unwrap();
    let pair = std::sync::Arc::new(NpyPair::<f32, u8>::new(npz.array("x").unwrap(), npz.array("y").unwrap()).unwrap());
    type Items = Vec<Batch<(ndarray::ArrayD<f32>, u8)>>;
    let run = |workers: usize, order: Order, from: usize| -> Items {
        Loader::new(std::sync::Arc::clone(&pair), 3)
            .order(order)
            .workers(workers)
            .epoch(11, 2, from)
            .collect::<kiln_data::Result<Items>>()
            .unwrap()
    };
    for order in [Order::Sequential, Order::Shuffle, Order::BlockShuffle { window: 4 }] {
        let whole = run(0, order, 0);
        assert_eq!(whole.iter().map(|b| b.items.len()).sum::<usize>(), 10);
        for workers in [0, 2] {
            for from in 0..whole.len() {
                let resumed = run(workers, order, from);
                assert_eq!(resumed.len(), whole.len() - from);
                for (a, b) in resumed.iter().zip(&whole[from..]) {
                    assert_eq!((a.index, &a.indices), (b.index, &b.indices), "{order:?} {workers} workers from {from}");
                    assert_eq!(a.items, b.items);
                }
            }
        }
    }
    // The fingerprint names the files, so a checkpoint over other data is refused.
    assert!(pair.fingerprint().unwrap().contains("pair_compressed.npz"));
}

/// Every fixture cut short at every length, and with every byte flipped, is read or refused
/// with an error: never a panic, never an allocation the file does not justify.
#[test]
fn damaged_files_are_errors_never_panics() {
    fn read_all(a: &NpyArray) {
        for i in 0..a.len().min(16) {
            let _ = a.item::<f64>(i);
            let _ = a.item::<u8>(i);
            let _ = a.scalar::<i64>(i);
        }
    }
    let mut tried = 0;
    for entry in std::fs::read_dir(fixture("")).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_string();
        if ext != "npy" && ext != "npz" {
            continue;
        }
        let whole = std::fs::read(&path).unwrap();
        let mut variants: Vec<Vec<u8>> = (0..whole.len()).map(|n| whole[..n].to_vec()).collect();
        for i in 0..whole.len() {
            let mut flipped = whole.clone();
            flipped[i] ^= 0xff;
            variants.push(flipped);
        }
        for bytes in variants {
            tried += 1;
            if ext == "npy" {
                if let Ok(a) = NpyArray::from_bytes("damaged.npy", bytes) {
                    read_all(&a);
                }
            } else if let Ok(npz) = Npz::from_bytes("damaged.npz", bytes) {
                for name in npz.names().into_iter().map(String::from).collect::<Vec<_>>() {
                    if let Ok(a) = npz.array(&name) {
                        read_all(&a);
                    }
                }
            }
        }
    }
    assert!(tried > 5000, "{tried} damaged variants");
}
