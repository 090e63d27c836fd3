//! The model registry: numbered, immutable versions of named models, and movable aliases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::fsutil::{self, now_ms, read_json, write_json};
use crate::{Error, Result};

static STAGING_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What the caller says about a version when registering it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RegisterOptions {
    /// The run that produced the model.
    pub run_id: Option<String>,
    /// The dataset version (hash) it was trained on.
    pub dataset_hash: Option<String>,
    /// Headline metrics (for example test accuracy).
    pub metrics: BTreeMap<String, f64>,
    /// Free text.
    pub description: Option<String>,
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
    /// Lineage and metrics given at registration.
    #[serde(flatten)]
    pub options: RegisterOptions,
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

/// Named models, each with numbered versions and aliases such as `production`.
///
/// Versions are immutable. Registering copies the package into a private staging directory
/// and then renames it to `versions/<n>`; the rename fails if another process took `n` first,
/// in which case the next number is tried. No lock is held, so concurrent registrations from
/// many jobs are safe, and a reader never sees a half-copied version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Registers the directory `package` as the next version of `model`.
    pub fn register(&self, model: &str, package: &Path, options: RegisterOptions) -> Result<ModelVersion> {
        fsutil::check_name("model name", model)?;
        if !package.is_dir() {
            return Err(Error::NotFound(format!("package directory {}", package.display())));
        }
        let model_dir = self.root.join(model);
        let versions = model_dir.join("versions");
        let staging_root = model_dir.join(".staging");
        std::fs::create_dir_all(&versions).at(&versions)?;
        std::fs::create_dir_all(&staging_root).at(&staging_root)?;
        let staging = staging_root.join(format!(
            "{}-{}-{}",
            std::process::id(),
            now_ms(),
            STAGING_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&staging);
        fsutil::copy_tree(package, &staging.join("package"))?;
        let mut version = self.latest_number(model)?.unwrap_or(0) + 1;
        loop {
            let meta = ModelVersion {
                model: model.to_string(),
                version,
                created_ms: now_ms(),
                options: options.clone(),
                package_dir: versions.join(version.to_string()).join("package"),
            };
            write_json(&staging.join("meta.json"), &meta)?;
            let target = versions.join(version.to_string());
            match std::fs::rename(&staging, &target) {
                Ok(()) => {
                    fsutil::sync_dir(&versions)?;
                    return Ok(meta);
                }
                Err(_) if target.exists() => version += 1,
                Err(source) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(Error::Io { path: target, source });
                }
            }
        }
    }

    /// Points `alias` of `model` at `version` (which must exist), replacing any earlier target.
    pub fn set_alias(&self, model: &str, alias: &str, version: u32) -> Result<()> {
        fsutil::check_name("alias", alias)?;
        if alias == "latest" || alias.parse::<u32>().is_ok() {
            return Err(Error::InvalidName {
                what: "alias",
                name: alias.into(),
                reason: "it is reserved (a number or 'latest')",
            });
        }
        self.version(model, version)?;
        let path = self.root.join(model).join("aliases").join(format!("{alias}.json"));
        write_json(&path, &AliasRecord { version, set_ms: now_ms() })
    }

    /// The aliases of `model` and the versions they point to.
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, u32>> {
        fsutil::check_name("model name", model)?;
        let dir = self.root.join(model).join("aliases");
        let mut out = BTreeMap::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => return Err(Error::Io { path: dir, source }),
        };
        for entry in entries {
            let path = entry.at(&dir)?.path();
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
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => return Err(Error::Io { path: self.root.clone(), source }),
        };
        for entry in entries {
            let entry = entry.at(&self.root)?;
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
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Io { path: dir, source }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.at(&dir)?;
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
