//! The `HF://org/name[@revision][/file.gguf]` model string, and the checks on every repo-relative
//! file name, since those names come from downloaded JSON and become paths in the cache.

use crate::error::{EngineError, Result};

const SCHEME: &str = "hf://";
const DEFAULT_REVISION: &str = "main";
const USAGE: &str = "expected HF://org/name, HF://org/name@revision or HF://org/name/file.gguf";

/// One model on the Hub: a whole repository, or one GGUF file inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `org/name`
    pub repo_id: String,
    /// Branch, tag or commit; `main` unless the string says `@revision`.
    pub revision: String,
    /// A `.gguf` file inside the repository (may sit in a sub-folder).
    pub file: Option<String>,
}

impl HubRef {
    /// `Ok(None)` when `model` is not an `HF://` string (the scheme is matched case-insensitively,
    /// as MLC accepts both `HF://` and `hf://`).
    pub fn parse(model: &str) -> Result<Option<HubRef>> {
        let Some(rest) =
            model.get(..SCHEME.len()).filter(|s| s.eq_ignore_ascii_case(SCHEME)).map(|_| &model[SCHEME.len()..])
        else {
            return Ok(None);
        };
        let invalid = |why: &str| EngineError::model_load(model, format!("{why}; {USAGE}"));
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        if parts.len() < 2 {
            return Err(invalid("the repository id needs an organisation and a name"));
        }
        let (name, revision) = parts[1].split_once('@').unwrap_or((parts[1], DEFAULT_REVISION));
        for segment in [parts[0], name] {
            if !is_repo_id_segment(segment) {
                return Err(invalid(&format!("{segment:?} is not a valid repository id part")));
            }
        }
        if revision.is_empty() || !revision.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(invalid(&format!("{revision:?} is not a valid revision")));
        }
        let file = if parts.len() > 2 {
            let file = parts[2..].join("/");
            check_repo_path(&file).map_err(|why| invalid(&why))?;
            if !file.to_ascii_lowercase().ends_with(".gguf") {
                return Err(invalid(&format!("{file:?} is not a .gguf file")));
            }
            Some(file)
        } else {
            None
        };
        Ok(Some(HubRef { repo_id: format!("{}/{name}", parts[0]), revision: revision.to_string(), file }))
    }
}

fn is_repo_id_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// A file name taken from a model's own JSON (shards, tokenizer files) must stay inside the
/// repository: hf-hub joins it onto the snapshot directory, where `/abs` or `..` would escape.
pub fn check_repo_path(path: &str) -> std::result::Result<(), String> {
    let escapes = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if escapes {
        Err(format!("{path:?} is not a file name inside the repository"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(model: &str) -> HubRef {
        HubRef::parse(model).expect("valid").expect("an HF:// string")
    }

    #[test]
    fn local_paths_are_not_hub_refs() {
        for model in ["/models/llama", "model.gguf", "hf:/x/y", "HF:", "", "héllo wörld"] {
            assert_eq!(HubRef::parse(model).expect("no error"), None, "{model}");
        }
    }

    #[test]
    fn repo_revision_and_gguf_file() {
        let plain = parsed("HF://mlc-ai/Llama-3-8B-Instruct-q4f16_1-MLC");
        assert_eq!(plain.repo_id, "mlc-ai/Llama-3-8B-Instruct-q4f16_1-MLC");
        assert_eq!(plain.revision, "main");
        assert_eq!(plain.file, None);
        assert_eq!(parsed("hf://org/name/").repo_id, "org/name");
        let pinned = parsed("HF://org/name@v1.0");
        assert_eq!((pinned.repo_id.as_str(), pinned.revision.as_str()), ("org/name", "v1.0"));
        let gguf = parsed("HF://org/name@abc123/sub/model.Q4_0.GGUF");
        assert_eq!(gguf.revision, "abc123");
        assert_eq!(gguf.file.as_deref(), Some("sub/model.Q4_0.GGUF"));
    }

    #[test]
    fn malformed_refs_are_model_load_errors() {
        for model in [
            "HF://",
            "HF://name",
            "HF://org/name/config.json",
            "HF://org/name/../../etc/x.gguf",
            "HF://org/na me",
            "HF://org/name@",
            "HF://../name",
        ] {
            let err = HubRef::parse(model).expect_err(model);
            assert!(matches!(err, EngineError::ModelLoad { .. }), "{model}: {err}");
            assert!(err.to_string().contains("HF://org/name"), "{err}");
        }
    }

    #[test]
    fn repo_paths_stay_inside_the_repository() {
        for ok in ["params_shard_0.bin", "onnx/model.safetensors", "a.b-c_d.json"] {
            assert!(check_repo_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b"] {
            assert!(check_repo_path(bad).is_err(), "{bad}");
        }
    }
}
