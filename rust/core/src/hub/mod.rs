//! `HF://org/name` model paths: the model's files are fetched into the standard Hugging Face cache
//! (`HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE` honoured) and the local snapshot is loaded.
//!
//! The file list comes from the model's own files (config, tensor index, tokenizer list), never
//! from the Hub's listing API, so a mirror that serves only `/{repo}/resolve/{revision}/{file}` works.

mod manifest;
mod model_ref;
mod repo_files;
mod settings;

pub use model_ref::HubRef;
pub use settings::HubSettings;

use crate::error::{EngineError, Result};
use manifest::{HF_CONFIG, MLC_CONFIG};
use repo_files::RepoFiles;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A repository updated between two downloads leaves files of two commits; each pass re-reads the
/// newest ref, so the second pass normally settles it.
const MAX_PASSES: usize = 3;

/// `None` when `model` is not an `HF://` string; otherwise the local snapshot directory (or `.gguf`
/// file) holding the whole model, downloading what the cache lacks.
pub fn resolve(model: &str) -> Result<Option<PathBuf>> {
    let Some(hub_ref) = HubRef::parse(model)? else { return Ok(None) };
    let settings = HubSettings::from_env()?;
    let files = RepoFiles::open(model, &hub_ref, &settings)?;
    for _ in 0..MAX_PASSES {
        let fetched = fetch_model(&files, &hub_ref)?;
        match (&hub_ref.file, one_snapshot(&fetched)) {
            (Some(_), Some(_)) => return Ok(fetched.into_iter().next().map(|(_, path)| path)),
            (None, Some(dir)) => return Ok(Some(dir)),
            (_, None) => log::info!("{model}: the repository changed while downloading; fetching the newest commit"),
        }
    }
    Err(files.error(format!("the files did not settle on one commit after {MAX_PASSES} passes")))
}

/// `org/name` of an `HF://` string: the name the loaded model answers to.
pub fn repo_id(model: &str) -> Option<String> {
    HubRef::parse(model).ok().flatten().map(|r| r.repo_id)
}

/// Repo-relative file name and its path in the cache, config first.
type Fetched = Vec<(String, PathBuf)>;

fn fetch_model(files: &RepoFiles, hub_ref: &HubRef) -> Result<Fetched> {
    if let Some(gguf) = &hub_ref.file {
        return Ok(vec![(gguf.clone(), files.required(gguf)?)]);
    }
    let (config_name, config_path) = files.first_present(&[MLC_CONFIG, HF_CONFIG])?;
    let config = read_json(&config_path)?;
    let mut fetched = vec![(config_name.to_string(), config_path)];
    if config_name == MLC_CONFIG {
        fetch_mlc(files, &config, &mut fetched)?;
    } else {
        fetch_hf(files, &mut fetched)?;
    }
    Ok(fetched)
}

/// `mlc-chat-config.json` + tensor index + its shards + the tokenizer files the config lists.
fn fetch_mlc(files: &RepoFiles, config: &Value, fetched: &mut Fetched) -> Result<()> {
    let (index_name, index_path) = files.first_present(&manifest::TENSOR_CACHES)?;
    let shards = manifest::tensor_cache_shards(&read_json(&index_path)?).map_err(|m| invalid(&index_path, m))?;
    fetched.push((index_name.to_string(), index_path));
    let listed = manifest::mlc_tokenizer_files(config).map_err(|m| invalid(&fetched[0].1, m))?;
    for file in shards.into_iter().chain(listed) {
        let path = files.required(&file)?;
        fetched.push((file, path));
    }
    fetch_optional(files, &manifest::MLC_OPTIONAL, fetched)
}

/// `config.json` + safetensors (single file, or index and shards) + tokenizer and generation files.
fn fetch_hf(files: &RepoFiles, fetched: &mut Fetched) -> Result<()> {
    let (weights_name, weights_path) = files.first_present(&manifest::SAFETENSORS)?;
    let shards = if weights_name == manifest::SAFETENSORS_INDEX {
        manifest::safetensors_index_shards(&read_json(&weights_path)?).map_err(|m| invalid(&weights_path, m))?
    } else {
        Vec::new()
    };
    fetched.push((weights_name.to_string(), weights_path));
    for file in shards {
        let path = files.required(&file)?;
        fetched.push((file, path));
    }
    fetch_optional(files, &manifest::HF_OPTIONAL, fetched)
}

fn fetch_optional(files: &RepoFiles, names: &[&str], fetched: &mut Fetched) -> Result<()> {
    for &name in names {
        if fetched.iter().any(|(done, _)| done == name) {
            continue;
        }
        if let Some(path) = files.optional(name)? {
            fetched.push((name.to_string(), path));
        }
    }
    Ok(())
}

/// The snapshot directory shared by every fetched file, `None` if they span several commits.
fn one_snapshot(fetched: &Fetched) -> Option<PathBuf> {
    let mut dirs = fetched.iter().map(|(name, path)| path.ancestors().nth(name.split('/').count()));
    let first = dirs.next()??;
    dirs.all(|dir| dir == Some(first)).then(|| first.to_path_buf())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| invalid(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| invalid(path, format!("invalid JSON: {e}")))
}

fn invalid(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::model_load(path.display().to_string(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_snapshot_sees_files_of_two_commits() {
        let at = |commit: &str, file: &str| (file.to_string(), PathBuf::from(format!("/c/snapshots/{commit}/{file}")));
        let same = vec![at("a1", "config.json"), at("a1", "onnx/model.safetensors")];
        assert_eq!(one_snapshot(&same), Some(PathBuf::from("/c/snapshots/a1")));
        let mixed = vec![at("a1", "config.json"), at("b2", "model.safetensors")];
        assert_eq!(one_snapshot(&mixed), None);
    }

    #[test]
    fn non_hub_models_resolve_to_none() {
        assert_eq!(resolve("/no/such/dir").expect("not an HF path"), None);
        assert_eq!(repo_id("HF://org/name@v2/x.gguf").as_deref(), Some("org/name"));
        assert_eq!(repo_id("/models/x"), None);
    }
}
