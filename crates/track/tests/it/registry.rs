use kiln_track::{Error, RegisterOptions, Store};

fn package(dir: &std::path::Path, content: &str) -> std::path::PathBuf {
    let p = dir.join(format!("pkg-{content}"));
    std::fs::create_dir_all(p.join("sub")).unwrap();
    std::fs::write(p.join("weights.bin"), content).unwrap();
    std::fs::write(p.join("sub/extra.txt"), "x").unwrap();
    p
}

#[test]
fn versions_are_numbered_immutable_copies_and_aliases_move() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let reg = store.registry();
    let v1 = reg.register("m", &package(dir.path(), "one"), RegisterOptions::default()).unwrap();
    let v2 = reg
        .register("m", &package(dir.path(), "two"), RegisterOptions { run_id: Some("r2".into()), ..Default::default() })
        .unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(std::fs::read_to_string(v1.package_dir.join("weights.bin")).unwrap(), "one");
    assert!(v2.package_dir.join("sub/extra.txt").exists());

    reg.set_alias("m", "production", 1).unwrap();
    assert_eq!(reg.resolve("m", "production").unwrap().version, 1);
    reg.set_alias("m", "production", 2).unwrap();
    assert_eq!(reg.resolve("m", "production").unwrap().options.run_id.as_deref(), Some("r2"));
    assert_eq!(reg.resolve("m", "latest").unwrap().version, 2);
    assert_eq!(reg.resolve("m", "v1").unwrap().version, 1);
    assert!(matches!(reg.resolve("m", "staging"), Err(Error::NotFound(_))));
    assert!(matches!(reg.set_alias("m", "x", 9), Err(Error::NotFound(_))));
    assert!(matches!(reg.set_alias("m", "latest", 1), Err(Error::InvalidName { .. })));
    assert_eq!(reg.models().unwrap(), vec!["m".to_string()]);
}

#[test]
fn concurrent_registrations_never_collide() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let pkgs: Vec<_> = (0..8).map(|i| package(dir.path(), &i.to_string())).collect();
    let mut versions: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = pkgs
            .iter()
            .map(|p| {
                let reg = store.registry();
                s.spawn(move || reg.register("m", p, RegisterOptions::default()).unwrap().version)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    // Every version holds exactly one of the packages, each package once.
    let mut contents: Vec<String> = store
        .registry()
        .versions("m")
        .unwrap()
        .iter()
        .map(|v| std::fs::read_to_string(v.package_dir.join("weights.bin")).unwrap())
        .collect();
    contents.sort();
    assert_eq!(contents, (0..8).map(|i| i.to_string()).collect::<Vec<_>>());
}
