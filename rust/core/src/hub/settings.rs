//! Where the Hub is and where its cache lives, read from the same environment variables as the
//! `huggingface_hub` Python package, so both share one cache and one login.

use crate::error::{EngineError, Result};
use std::path::PathBuf;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// Base URL without a trailing slash (`HF_ENDPOINT`, e.g. a mirror).
    pub endpoint: String,
    /// The `hub` cache folder holding `models--org--name/` (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Sent as `Authorization: Bearer` (`HF_TOKEN`, else the token file written by `huggingface-cli login`).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: use the cache only, never the network.
    pub offline: bool,
}

impl HubSettings {
    pub fn from_env() -> Result<HubSettings> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// `var` returns a variable's value, `None` when unset or empty.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<HubSettings> {
        let hf_home = match var("HF_HOME") {
            Some(home) => PathBuf::from(home),
            None => default_hf_home(&var)?,
        };
        let cache_dir = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token_file = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| std::fs::read_to_string(token_file).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        // The same spellings of "true" as huggingface_hub's constants.
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.trim().to_ascii_uppercase().as_str()));
        Ok(HubSettings { endpoint: endpoint.trim_end_matches('/').to_string(), cache_dir, token, offline })
    }
}

fn default_hf_home(var: &impl Fn(&str) -> Option<String>) -> Result<PathBuf> {
    let cache = match var("XDG_CACHE_HOME") {
        Some(xdg) => PathBuf::from(xdg),
        None => {
            let home = var("HOME").or_else(|| var("USERPROFILE")).ok_or_else(|| {
                EngineError::model_load(
                    "HF_HOME",
                    "neither HF_HOME nor HOME is set: no place for the Hugging Face cache",
                )
            })?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(cache.join("huggingface"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> HubSettings {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubSettings::from_vars(|name| vars.get(name).cloned()).expect("settings")
    }

    #[test]
    fn defaults_follow_huggingface_hub() {
        let s = settings(&[("HOME", "/home/u")]);
        assert_eq!(s.endpoint, "https://huggingface.co");
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!s.offline);
        let xdg = settings(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(xdg.cache_dir, PathBuf::from("/xdg/huggingface/hub"));
    }

    #[test]
    fn hf_home_endpoint_and_offline() {
        let s =
            settings(&[("HF_HOME", "/data/hf"), ("HF_ENDPOINT", "http://127.0.0.1:8080/"), ("HF_HUB_OFFLINE", "yes")]);
        assert_eq!(s.cache_dir, PathBuf::from("/data/hf/hub"));
        assert_eq!(s.endpoint, "http://127.0.0.1:8080");
        assert!(s.offline);
        assert_eq!(settings(&[("HF_HOME", "/h"), ("HF_HUB_CACHE", "/c")]).cache_dir, PathBuf::from("/c"));
        assert!(!settings(&[("HF_HOME", "/h"), ("HF_HUB_OFFLINE", "0")]).offline);
    }

    #[test]
    fn token_from_variable_else_token_file() {
        let dir = std::env::temp_dir().join(format!("mlc-hub-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("token"), "hf_file\n").expect("token file");
        let home = dir.to_string_lossy().into_owned();
        assert_eq!(settings(&[("HF_HOME", &home)]).token.as_deref(), Some("hf_file"));
        assert_eq!(settings(&[("HF_HOME", &home), ("HF_TOKEN", "hf_env")]).token.as_deref(), Some("hf_env"));
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(settings(&[("HF_HOME", &home)]).token, None);
    }
}
