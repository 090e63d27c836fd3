//! `Store::gc`: unreferenced objects and leftovers go, everything referenced stays.

use std::time::Duration;

use kiln_track::{GcOptions, RegisterOptions, Store};

fn object_count(store: &Store) -> usize {
    let mut n = 0;
    for shard in std::fs::read_dir(store.root().join("objects")).unwrap() {
        let shard = shard.unwrap();
        if shard.file_name().len() == 2 {
            n += std::fs::read_dir(shard.path()).unwrap().count();
        }
    }
    n
}

#[test]
fn gc_removes_only_unreferenced_old_objects_and_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let mut run = store.run_builder("gc").capture_environment(false).start().unwrap();
    // A checkpoint rewritten each epoch: the first two contents end up unreferenced.
    for epoch in 0..3 {
        run.log_artifact_bytes("checkpoint", format!("weights of epoch {epoch}").as_bytes()).unwrap();
    }
    run.log_artifact_bytes("keep", b"kept forever").unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    // The same content logged by a second run is one object, referenced.
    let mut other = store.run_builder("gc").capture_environment(false).start().unwrap();
    other.log_artifact_bytes("copy", b"kept forever").unwrap();
    other.finish().unwrap();
    // Leftovers of an interrupted artifact write and an interrupted registration.
    std::fs::create_dir_all(store.root().join("objects/tmp")).unwrap();
    std::fs::write(store.root().join("objects/tmp/object.123.tmp"), b"half").unwrap();
    let pkg = dir.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("weights"), b"w").unwrap();
    store.registry().register("m", &pkg, RegisterOptions::default()).unwrap();
    std::fs::create_dir_all(store.root().join("models/m/.staging/crashed/package")).unwrap();
    assert_eq!(object_count(&store), 4);

    // Everything is younger than the default hour: nothing goes.
    let report = store.gc(&GcOptions::default()).unwrap();
    assert_eq!((report.objects, report.referenced, report.young_unreferenced), (4, 2, 2), "{report:?}");
    assert_eq!((report.removed_objects, report.removed_temporary, report.removed_staging), (0, 0, 0));

    let now = GcOptions { dry_run: true, grace: Duration::ZERO };
    let report = store.gc(&now).unwrap();
    assert_eq!((report.removed_objects, report.removed_temporary, report.removed_staging), (2, 1, 1), "{report:?}");
    assert_eq!(report.removed_bytes, 2 * "weights of epoch 0".len() as u64);
    assert_eq!(object_count(&store), 4, "a dry run removes nothing");

    let report = store.gc(&GcOptions { dry_run: false, ..now }).unwrap();
    assert_eq!((report.removed_objects, report.removed_temporary, report.removed_staging), (2, 1, 1), "{report:?}");
    assert_eq!(object_count(&store), 2);
    assert!(!store.root().join("objects/tmp/object.123.tmp").exists());
    assert!(!store.root().join("models/m/.staging/crashed").exists());
    // What is referenced still restores, and the registered version is untouched.
    let out = dir.path().join("restored");
    store.restore_artifact(&id, "checkpoint", &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"weights of epoch 2");
    store.restore_artifact(&id, "keep", &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"kept forever");
    let v = store.registry().version("m", 1).unwrap();
    assert_eq!(std::fs::read(v.package_dir.join("weights")).unwrap(), b"w");
    let again = store.gc(&GcOptions { dry_run: false, grace: Duration::ZERO }).unwrap();
    assert_eq!((again.removed_objects, again.objects, again.referenced), (0, 2, 2));
}

#[test]
fn logging_existing_content_refreshes_its_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let mut run = store.run_builder("gc").capture_environment(false).start().unwrap();
    let artifact = run.log_artifact_bytes("a", b"same bytes").unwrap();
    let path = store.object_path(&artifact.digest).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options().append(true).open(&path).unwrap().set_modified(old).unwrap();
    run.log_artifact_bytes("b", b"same bytes").unwrap();
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    assert!(modified > old + Duration::from_secs(3600), "reuse did not refresh the object's time");
    // An object removed between the check and the refresh is stored again.
    std::fs::remove_file(&path).unwrap();
    run.log_artifact_bytes("c", b"same bytes").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"same bytes");
    run.finish().unwrap();
}
