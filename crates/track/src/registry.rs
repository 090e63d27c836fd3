//! The model registry: numbered, immutable versions of named models, movable aliases, and a
//! history of every transition.
//!
//! ```text
//! models/<name>/versions/<n>/meta.json     lineage, metrics, package digest (immutable)
//!                            package/      the package files
//!                            tags.json     version tags (mutable)
//!               aliases/<alias>.json       version the alias points to
//!               events/<ms>-<id>.json      one file per transition: registered, alias set,
//!                                          alias removed, rollback, tag set
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::fsutil::{self, now_ms, read_json, read_json_or_default, write_json};
use crate::{Error, Result};

static STAGING_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What the caller says about a version when registering it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RegisterOptions {
    /// The run that produced the model. Must exist in the store; its git commit and dataset
    /// digests fill in the lineage when not given here.
    pub run_id: Option<String>,
    /// Digests of the datasets the model was trained and evaluated on.
    pub dataset_digests: Vec<String>,
    /// The commit of the code that trained it.
    pub git_commit: Option<String>,
    /// Headline metrics (for example test accuracy).
    pub metrics: BTreeMap<String, f64>,
    /// Free text.
    pub description: Option<String>,
    /// Initial version tags.
    pub tags: BTreeMap<String, String>,
}

/// Where a version came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lineage {
    /// The run that produced it.
    pub run_id: Option<String>,
    /// Digests of its datasets.
    pub dataset_digests: Vec<String>,
    /// The commit of the code that trained it.
    pub git_commit: Option<String>,
}

/// A registered version, as stored in `versions/<n>/meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// Model name.
    pub model: String,
    /// Version number, from 1.
    pub version: u32,
    /// Registration time, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Who registered it (`KILN_ACTOR`, or `user@host`).
    pub created_by: String,
    /// Run, datasets and commit.
    pub lineage: Lineage,
    /// BLAKE3 over the package's files (`path\0digest\n`, sorted).
    pub package_digest: Option<String>,
    /// Headline metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Free text.
    pub description: Option<String>,
    /// Version tags (mutable, from `tags.json`).
    #[serde(skip)]
    pub tags: BTreeMap<String, String>,
    /// The directory holding the package files.
    #[serde(skip)]
    pub package_dir: PathBuf,
}

/// An alias record, `aliases/<alias>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AliasRecord {
    version: u32,
    set_ms: i64,
}

/// What happened in a registry transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A version was registered.
    Registered,
    /// An alias was pointed at a version.
    AliasSet,
    /// An alias was removed.
    AliasRemoved,
    /// An alias was moved back to the version it pointed to before.
    Rollback,
    /// A version tag was set.
    TagSet,
}

impl EventKind {
    /// The snake_case name used in files and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::AliasSet => "alias_set",
            Self::AliasRemoved => "alias_removed",
            Self::Rollback => "rollback",
            Self::TagSet => "tag_set",
        }
    }
}

/// One registry transition: who did what, when, from where to where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEvent {
    /// When, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// What.
    pub event: EventKind,
    /// The version registered, aliased or tagged.
    pub version: Option<u32>,
    /// The alias moved or removed.
    pub alias: Option<String>,
    /// The version the alias pointed to before.
    pub from_version: Option<u32>,
    /// Who (`KILN_ACTOR`, or `user@host`).
    pub actor: String,
    /// Why, as given by the caller.
    pub reason: Option<String>,
    /// The tag set, for `tag_set`.
    #[serde(default)]
    pub tag: Option<(String, String)>,
}

/// Named models, each with numbered versions and aliases such as `production`.
///
/// Versions are immutable. Registering copies the package into a private staging directory
/// and renames it to `versions/<n>`; the rename fails if another process took `n` first, and
/// the next number is tried. No lock is held, so concurrent registrations from many jobs get
/// distinct numbers, and a reader never sees a half-copied version. Aliases move by atomic
/// replacement of one small file; every move is recorded as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    root: PathBuf,
    runs: PathBuf,
}

/// Names a reference cannot take as an alias.
const RESERVED: [&str; 1] = ["latest"];

fn actor() -> String {
    std::env::var("KILN_ACTOR").unwrap_or_else(|_| {
        format!("{}@{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()), crate::env::hostname())
    })
}

impl Registry {
    pub(crate) fn new(root: PathBuf, runs: PathBuf) -> Self {
        Self { root, runs }
    }

    /// Registers the directory `package` as the next version of `model`.
    pub fn register(&self, model: &str, package: &Path, options: RegisterOptions) -> Result<ModelVersion> {
        fsutil::check_name("model name", model)?;
        if !package.is_dir() {
            return Err(Error::NotFound(format!("package directory {}", package.display())));
        }
        let lineage = self.lineage(&options)?;
        let model_dir = self.root.join(model);
        let versions = model_dir.join("versions");
        let staging_root = model_dir.join(".staging");
        std::fs::create_dir_all(&versions).at(&versions)?;
        std::fs::create_dir_all(&staging_root).at(&staging_root)?;
        let staging = staging_root.join(format!(
            "{}-{}-{}-{}",
            crate::env::hostname(),
            std::process::id(),
            now_ms(),
            STAGING_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let result = (|| {
            fsutil::copy_tree(package, &staging.join("package"))?;
            let package_digest = Some(tree_digest(&staging.join("package"))?);
            write_json(&staging.join("tags.json"), &options.tags)?;
            let mut version = self.latest_number(model)?.unwrap_or(0) + 1;
            loop {
                let meta = ModelVersion {
                    model: model.to_string(),
                    version,
                    created_ms: now_ms(),
                    created_by: actor(),
                    lineage: lineage.clone(),
                    package_digest: package_digest.clone(),
                    metrics: options.metrics.clone(),
                    description: options.description.clone(),
                    tags: options.tags.clone(),
                    package_dir: versions.join(version.to_string()).join("package"),
                };
                write_json(&staging.join("meta.json"), &meta)?;
                let target = versions.join(version.to_string());
                match std::fs::rename(&staging, &target) {
                    Ok(()) => {
                        fsutil::sync_dir(&versions)?;
                        return Ok(meta);
                    }
                    // Another process took this number: its directory exists and is not empty.
                    Err(_) if target.exists() => version += 1,
                    Err(source) => return Err(Error::Io { path: target, source }),
                }
            }
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        let meta = result?;
        self.record(model, EventKind::Registered, Some(meta.version), None, None, options.description.clone(), None)?;
        Ok(meta)
    }

    fn lineage(&self, options: &RegisterOptions) -> Result<Lineage> {
        let mut lineage = Lineage {
            run_id: options.run_id.clone(),
            dataset_digests: options.dataset_digests.clone(),
            git_commit: options.git_commit.clone(),
        };
        if let Some(run_id) = &options.run_id {
            fsutil::check_name("run id", run_id)?;
            let dir = self.runs.join(run_id);
            if !dir.join("meta.json").exists() {
                return Err(Error::NotFound(format!("run {run_id} (named as the model's lineage)")));
            }
            if lineage.git_commit.is_none() {
                let env: Option<crate::Environment> = read_json(&dir.join("env.json")).ok();
                lineage.git_commit = env.and_then(|e| e.git_commit);
            }
            if lineage.dataset_digests.is_empty() {
                let inputs: Vec<crate::DatasetInput> = read_json_or_default(&dir.join("inputs.json"))?;
                lineage.dataset_digests = inputs.into_iter().map(|i| i.digest).collect();
                lineage.dataset_digests.dedup();
            }
        }
        Ok(lineage)
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        model: &str,
        event: EventKind,
        version: Option<u32>,
        alias: Option<&str>,
        from_version: Option<u32>,
        reason: Option<String>,
        tag: Option<(String, String)>,
    ) -> Result<()> {
        let at_ms = now_ms();
        let e = RegistryEvent {
            at_ms,
            event,
            version,
            alias: alias.map(str::to_string),
            from_version,
            actor: actor(),
            reason,
            tag,
        };
        let name = format!(
            // Zero-padded so that events of one process sort by the counter within a ms.
            "{at_ms:013}-{}-{}-{:020}.json",
            crate::env::hostname(),
            std::process::id(),
            STAGING_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        write_json(&self.root.join(model).join("events").join(name), &e)
    }

    /// Points `alias` of `model` at `version` (which must exist), returning the version it
    /// pointed to before.
    pub fn set_alias(&self, model: &str, alias: &str, version: u32) -> Result<Option<u32>> {
        self.move_alias(model, alias, version, None, EventKind::AliasSet)
    }

    /// [`Registry::set_alias`], recording why.
    pub fn set_alias_because(&self, model: &str, alias: &str, version: u32, reason: &str) -> Result<Option<u32>> {
        self.move_alias(model, alias, version, Some(reason.to_string()), EventKind::AliasSet)
    }

    fn move_alias(
        &self,
        model: &str,
        alias: &str,
        version: u32,
        reason: Option<String>,
        event: EventKind,
    ) -> Result<Option<u32>> {
        check_alias(alias)?;
        self.version(model, version)?;
        let before = self.aliases(model)?.get(alias).copied();
        let path = self.root.join(model).join("aliases").join(format!("{alias}.json"));
        write_json(&path, &AliasRecord { version, set_ms: now_ms() })?;
        self.record(model, event, Some(version), Some(alias), before, reason, None)?;
        Ok(before)
    }

    /// Removes `alias` of `model`, returning the version it pointed to.
    pub fn remove_alias(&self, model: &str, alias: &str, reason: Option<&str>) -> Result<u32> {
        check_alias(alias)?;
        let before = self
            .aliases(model)?
            .get(alias)
            .copied()
            .ok_or_else(|| Error::NotFound(format!("alias {alias:?} of model {model}")))?;
        let path = self.root.join(model).join("aliases").join(format!("{alias}.json"));
        std::fs::remove_file(&path).at(&path)?;
        self.record(model, EventKind::AliasRemoved, None, Some(alias), Some(before), reason.map(str::to_string), None)?;
        Ok(before)
    }

    /// Moves `alias` back to the version it pointed to before its last move, returning that
    /// version. Each rollback steps one move further back.
    pub fn rollback(&self, model: &str, alias: &str, reason: Option<&str>) -> Result<u32> {
        check_alias(alias)?;
        let current = self.aliases(model)?.get(alias).copied();
        // Walk the alias's moves backwards; a rollback undoes the move before it.
        let moves: Vec<RegistryEvent> = self
            .history(model)?
            .into_iter()
            .filter(|e| e.alias.as_deref() == Some(alias) && e.event != EventKind::TagSet)
            .collect();
        let mut skip = 0usize;
        let mut target = None;
        for e in moves.iter().rev() {
            if e.event == EventKind::Rollback {
                skip += 1;
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            target = e.from_version;
            break;
        }
        let target = target.filter(|t| Some(*t) != current).ok_or_else(|| {
            Error::NotFound(format!("an earlier version of alias {alias:?} of model {model} to roll back to"))
        })?;
        self.move_alias(model, alias, target, reason.map(str::to_string), EventKind::Rollback)?;
        Ok(target)
    }

    /// Sets a tag on a version.
    pub fn set_version_tag(&self, model: &str, version: u32, key: &str, value: &str) -> Result<()> {
        let v = self.version(model, version)?;
        let mut tags = v.tags;
        tags.insert(key.to_string(), value.to_string());
        let path = self.root.join(model).join("versions").join(version.to_string()).join("tags.json");
        write_json(&path, &tags)?;
        self.record(model, EventKind::TagSet, Some(version), None, None, None, Some((key.into(), value.into())))
    }

    /// Every transition of `model`, oldest first.
    pub fn history(&self, model: &str) -> Result<Vec<RegistryEvent>> {
        fsutil::check_name("model name", model)?;
        let dir = self.root.join(model).join("events");
        let entries = fsutil::entries_or_empty(&dir)?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json")
                && !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
            {
                files.push(path);
            }
        }
        files.sort();
        files.iter().map(|p| read_json(p)).collect()
    }

    /// The aliases of `model` and the versions they point to.
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, u32>> {
        fsutil::check_name("model name", model)?;
        let dir = self.root.join(model).join("aliases");
        let mut out = BTreeMap::new();
        let entries = fsutil::entries_or_empty(&dir)?;
        for entry in entries {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let record: AliasRecord = read_json(&path)?;
            out.insert(name.to_string(), record.version);
        }
        Ok(out)
    }

    /// One version of `model`.
    pub fn version(&self, model: &str, version: u32) -> Result<ModelVersion> {
        fsutil::check_name("model name", model)?;
        let dir = self.root.join(model).join("versions").join(version.to_string());
        let path = dir.join("meta.json");
        if !path.exists() {
            return Err(Error::NotFound(format!("version {version} of model {model}")));
        }
        let mut v: ModelVersion = read_json(&path)?;
        v.tags = read_json_or_default(&dir.join("tags.json"))?;
        v.package_dir = dir.join("package");
        Ok(v)
    }

    /// Resolves a reference: a version number (`3` or `v3`), `latest`, or an alias.
    pub fn resolve(&self, model: &str, reference: &str) -> Result<ModelVersion> {
        let number = reference.strip_prefix('v').unwrap_or(reference).parse::<u32>().ok();
        if let Some(n) = number {
            return self.version(model, n);
        }
        if reference == "latest" {
            let n = self.latest_number(model)?.ok_or_else(|| Error::NotFound(format!("model {model}")))?;
            return self.version(model, n);
        }
        match self.aliases(model)?.get(reference) {
            Some(n) => self.version(model, *n),
            None => Err(Error::NotFound(format!("alias {reference:?} of model {model}"))),
        }
    }

    /// Every version of `model`, oldest first.
    pub fn versions(&self, model: &str) -> Result<Vec<ModelVersion>> {
        self.version_numbers(model)?.into_iter().map(|n| self.version(model, n)).collect()
    }

    /// The names of all registered models, sorted.
    pub fn models(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let entries = fsutil::entries_or_empty(&self.root)?;
        for entry in entries {
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
                && entry.path().join("versions").is_dir()
            {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    fn version_numbers(&self, model: &str) -> Result<Vec<u32>> {
        fsutil::check_name("model name", model)?;
        let dir = self.root.join(model).join("versions");
        let entries = fsutil::entries_or_empty(&dir)?;
        let mut out = Vec::new();
        for entry in entries {
            if let Some(n) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && entry.path().join("meta.json").exists()
            {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn latest_number(&self, model: &str) -> Result<Option<u32>> {
        Ok(self.version_numbers(model)?.last().copied())
    }
}

impl Registry {
    /// Copies versions, version tags, aliases and events that `dest` lacks (see
    /// [`crate::Store::sync_to`]). Versions are immutable: a version number that holds a
    /// different package in `dest` is a conflict and is left alone. An alias takes the value
    /// set most recently in either registry.
    pub(crate) fn sync_into(&self, dest: &Registry, report: &mut crate::SyncReport) -> Result<()> {
        for model in self.models()? {
            for v in self.versions(&model)? {
                let vdir = self.root.join(&model).join("versions").join(v.version.to_string());
                let target = dest.root.join(&model).join("versions").join(v.version.to_string());
                match dest.version(&model, v.version) {
                    Ok(existing) => {
                        if existing.package_digest != v.package_digest {
                            report.conflicts.push(format!(
                                "model {model} version {}: the stores hold different packages",
                                v.version
                            ));
                            continue;
                        }
                    }
                    Err(Error::NotFound(_)) => {
                        let staging = dest.root.join(&model).join(".staging").join(format!(
                            "sync-{}-{}-{}",
                            crate::env::hostname(),
                            std::process::id(),
                            STAGING_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        ));
                        fsutil::copy_tree(&vdir, &staging)?;
                        let versions = dest.root.join(&model).join("versions");
                        std::fs::create_dir_all(&versions).at(&versions)?;
                        match std::fs::rename(&staging, &target) {
                            Ok(()) => {
                                fsutil::sync_dir(&versions)?;
                                report.versions_copied += 1;
                            }
                            Err(_) if target.exists() => {
                                let _ = std::fs::remove_dir_all(&staging);
                                report.conflicts.push(format!(
                                    "model {model} version {}: registered in the destination during the sync",
                                    v.version
                                ));
                            }
                            Err(source) => return Err(Error::Io { path: target, source }),
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                let tags = vdir.join("tags.json");
                if let Ok(bytes) = std::fs::read(&tags)
                    && std::fs::read(target.join("tags.json")).ok().as_deref() != Some(&bytes[..])
                {
                    fsutil::write_atomic(&target.join("tags.json"), &bytes)?;
                    report.registry_records_copied += 1;
                }
            }
            for sub in ["events", "aliases"] {
                let from = self.root.join(&model).join(sub);
                let Ok(entries) = std::fs::read_dir(&from) else { continue };
                for entry in entries {
                    let entry = entry.at(&from)?;
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with('.') {
                        continue;
                    }
                    let to = dest.root.join(&model).join(sub).join(&name);
                    let newer = match sub {
                        "events" => !to.exists(),
                        _ => {
                            let mine: AliasRecord = read_json(&entry.path())?;
                            match read_json::<AliasRecord>(&to) {
                                Ok(theirs) => mine.set_ms > theirs.set_ms && mine != theirs,
                                Err(_) => true,
                            }
                        }
                    };
                    if newer {
                        let bytes = std::fs::read(entry.path()).at(&entry.path())?;
                        fsutil::write_atomic(&to, &bytes)?;
                        report.registry_records_copied += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_alias(alias: &str) -> Result<()> {
    fsutil::check_name("alias", alias)?;
    if RESERVED.contains(&alias) || alias.strip_prefix('v').unwrap_or(alias).parse::<u32>().is_ok() {
        return Err(Error::InvalidName {
            what: "alias",
            name: alias.into(),
            reason: "it is reserved (a version number or 'latest')",
        });
    }
    Ok(())
}

/// BLAKE3 over a directory's files: `relative/path\0<blake3 of content>\n`, sorted by path.
pub(crate) fn tree_digest(dir: &Path) -> Result<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) -> Result<()> {
        for entry in std::fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let path = entry.path();
            if path.is_dir() {
                walk(&path, &rel, out)?;
            } else {
                let mut hasher = blake3::Hasher::new();
                hasher.update_reader(std::fs::File::open(&path).at(&path)?).at(&path)?;
                out.push((rel, hasher.finalize().to_hex().to_string()));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    files.sort();
    let mut h = blake3::Hasher::new();
    for (path, digest) in files {
        h.update(path.as_bytes());
        h.update(b"\0");
        h.update(digest.as_bytes());
        h.update(b"\n");
    }
    Ok(h.finalize().to_hex().to_string())
}
