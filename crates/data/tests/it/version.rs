//! Content digests of files and directories, the hash cache, and version records.

use std::path::Path;

use kiln_data::{Dataset, DatasetVersion, HashCache, hash_path};

use crate::data_file;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_file_digest_is_blake3_of_its_bytes_as_the_dataset_records() {
    let path = data_file("digits.csv");
    let digest = hash_path(&path, None).unwrap();
    assert_eq!(digest.digest, Dataset::load_csv(&path).unwrap().hash());
    assert_eq!(digest.digest, blake3::hash(&std::fs::read(&path).unwrap()).to_hex().to_string());
    assert_eq!((digest.files, digest.hashed), (1, 1));

    // Large files take the multi-threaded path; the digest is the same BLAKE3.
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(17u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    write(&dir.path().join("big.bin"), &big);
    assert_eq!(hash_path(&dir.path().join("big.bin"), None).unwrap().digest, blake3::hash(&big).to_hex().to_string());
}

#[test]
fn a_directory_digest_depends_on_names_and_contents_only() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for root in [&a, &b] {
        write(&root.join("train.csv"), b"x,y\n1,2\n");
        write(&root.join("parts/0001.csv"), b"x,y\n3,4\n");
    }
    let da = hash_path(&a, None).unwrap();
    assert_eq!(da, hash_path(&b, None).unwrap(), "same tree, same digest");
    assert_eq!((da.files, da.bytes), (2, 16));
    let mut h = blake3::Hasher::new();
    for (rel, content) in [("parts/0001.csv", &b"x,y\n3,4\n"[..]), ("train.csv", &b"x,y\n1,2\n"[..])] {
        h.update(format!("{rel}\0{}\n", blake3::hash(content).to_hex()).as_bytes());
    }
    assert_eq!(da.digest, h.finalize().to_hex().to_string(), "sorted `path\\0digest\\n` lines");

    std::fs::rename(b.join("train.csv"), b.join("valid.csv")).unwrap();
    assert_ne!(hash_path(&b, None).unwrap().digest, da.digest, "a renamed file changes the digest");
}

#[test]
fn the_cache_skips_unchanged_files_and_notices_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for i in 0..20 {
        write(&data.join(format!("part-{i:02}.csv")), format!("id\n{i}\n").as_bytes());
    }
    let cache_path = dir.path().join("hash-cache.json");
    let mut cache = HashCache::open(&cache_path).unwrap();
    let first = hash_path(&data, Some(&mut cache)).unwrap();
    assert_eq!(first.hashed, 20);
    cache.save().unwrap();

    let mut cache = HashCache::open(&cache_path).unwrap();
    assert_eq!(cache.len(), 20);
    let again = hash_path(&data, Some(&mut cache)).unwrap();
    assert_eq!((again.hashed, again.digest.clone()), (0, first.digest.clone()), "nothing re-read");

    // Same size, new content: the modification time gives it away.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&data.join("part-07.csv"), b"id\n9\n");
    let changed = hash_path(&data, Some(&mut cache)).unwrap();
    assert_eq!(changed.hashed, 1);
    assert_ne!(changed.digest, first.digest);
    assert_eq!(changed.digest, hash_path(&data, None).unwrap().digest, "the cache never changes the answer");

    // A damaged cache file is rebuilt, not trusted.
    std::fs::write(&cache_path, b"{ not json").unwrap();
    let mut cache = HashCache::open(&cache_path).unwrap();
    assert!(cache.is_empty());
    assert_eq!(hash_path(&data, Some(&mut cache)).unwrap().hashed, 20);
}

#[test]
fn version_records() {
    let data = Dataset::load_csv(data_file("penguins.csv")).unwrap();
    let raw = DatasetVersion::of("penguins", &data);
    assert_eq!((raw.rows, raw.digest.as_str()), (Some(344), data.hash()));
    assert_eq!(raw.schema[0], ("species".to_string(), "str".to_string()));
    let on_disk = DatasetVersion::of_path("penguins", &data_file("penguins.csv"), None).unwrap();
    assert_eq!(on_disk.digest, raw.digest);
    let clean = DatasetVersion::of("penguins-clean", &data.take(&[0, 1, 2]).unwrap()).derived_from(&raw);
    assert_eq!(clean.parent.as_deref(), Some(raw.digest.as_str()));
    assert_ne!(clean.digest, raw.digest, "a subset is a version of its own");
    assert_ne!(data.take(&[0, 1]).unwrap().hash(), data.take(&[1, 0]).unwrap().hash());
    let json = serde_json::to_string(&clean).unwrap();
    assert_eq!(serde_json::from_str::<DatasetVersion>(&json).unwrap(), clean);
}

#[test]
fn shipped_datasets_load_from_the_library_with_the_file_digest() {
    for (loaded, file, rows, cols) in [
        (kiln_data::datasets::digits().unwrap(), "digits.csv", 1797, 65),
        (kiln_data::datasets::breast_cancer().unwrap(), "breast_cancer.csv", 569, 31),
        (kiln_data::datasets::penguins().unwrap(), "penguins.csv", 344, 8),
    ] {
        assert_eq!(loaded.frame().shape(), (rows, cols), "{file}");
        assert_eq!(loaded.hash(), hash_path(&data_file(file), None).unwrap().digest, "{file}");
        assert!(loaded.source().starts_with("kiln:"));
    }
}
