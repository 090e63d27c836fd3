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
    let run = store.start_run("exp").unwrap();
    let run_id = run.id().to_string();
    run.finish().unwrap();
    let options = RegisterOptions {
        run_id: Some(run_id.clone()),
        git_commit: Some("c0ffee".into()),
        dataset_digests: vec!["d2".into()],
        ..Default::default()
    };
    let v2 = reg.register("m", &package(dir.path(), "two"), options).unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(std::fs::read_to_string(v1.package_dir.join("weights.bin")).unwrap(), "one");
    assert!(v2.package_dir.join("sub/extra.txt").exists());

    reg.set_alias("m", "production", 1).unwrap();
    assert_eq!(reg.resolve("m", "production").unwrap().version, 1);
    reg.set_alias("m", "production", 2).unwrap();
    assert_eq!(reg.resolve("m", "production").unwrap().lineage.run_id.as_deref(), Some(run_id.as_str()));
    assert_eq!(v2.lineage.git_commit.as_deref(), Some("c0ffee"));
    assert_eq!(v1.package_digest.as_ref().map(String::len), Some(64));
    assert_ne!(v1.package_digest, v2.package_digest);
    assert_eq!(reg.resolve("m", "latest").unwrap().version, 2);
    assert_eq!(reg.resolve("m", "v1").unwrap().version, 1);
    assert!(matches!(reg.resolve("m", "staging"), Err(Error::NotFound(_))));
    assert!(matches!(reg.set_alias("m", "x", 9), Err(Error::NotFound(_))));
    assert!(matches!(reg.set_alias("m", "latest", 1), Err(Error::InvalidName { .. })));
    assert!(matches!(reg.set_alias("m", "v2", 1), Err(Error::InvalidName { .. })));
    assert_eq!(reg.models().unwrap(), vec!["m".to_string()]);
    // Lineage must name a real run.
    let bad = RegisterOptions { run_id: Some("no-such-run".into()), ..Default::default() };
    assert!(matches!(reg.register("m", &package(dir.path(), "three"), bad), Err(Error::NotFound(_))));
}

#[test]
fn every_transition_is_recorded_and_rollback_walks_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let reg = store.registry();
    for i in 1..=3 {
        reg.register("m", &package(dir.path(), &i.to_string()), RegisterOptions::default()).unwrap();
    }
    assert_eq!(reg.set_alias("m", "production", 1).unwrap(), None);
    assert_eq!(reg.set_alias_because("m", "production", 2, "better F1").unwrap(), Some(1));
    assert_eq!(reg.set_alias("m", "production", 3).unwrap(), Some(2));
    reg.set_alias("m", "canary", 3).unwrap();
    reg.set_version_tag("m", 3, "validated", "yes").unwrap();
    assert_eq!(reg.version("m", 3).unwrap().tags["validated"], "yes");

    assert_eq!(reg.rollback("m", "production", Some("latency regression")).unwrap(), 2);
    assert_eq!(reg.resolve("m", "production").unwrap().version, 2);
    assert_eq!(reg.rollback("m", "production", None).unwrap(), 1);
    assert!(matches!(reg.rollback("m", "production", None), Err(Error::NotFound(_))), "nothing before 1");
    assert_eq!(reg.remove_alias("m", "canary", Some("done")).unwrap(), 3);
    assert!(!reg.aliases("m").unwrap().contains_key("canary"));

    let history = reg.history("m").unwrap();
    let kinds: Vec<&str> = history.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "registered",
            "registered",
            "registered",
            "alias_set",
            "alias_set",
            "alias_set",
            "alias_set",
            "tag_set",
            "rollback",
            "rollback",
            "alias_removed"
        ]
    );
    let promote = &history[4];
    assert_eq!((promote.version, promote.from_version), (Some(2), Some(1)));
    assert_eq!(promote.reason.as_deref(), Some("better F1"));
    assert!(!promote.actor.is_empty());
    let rollback = &history[8];
    assert_eq!((rollback.version, rollback.from_version), (Some(2), Some(3)));
    assert_eq!(rollback.reason.as_deref(), Some("latency regression"));
    assert!(history.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
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
