//! Which files make up a model, read from the model's own index files, because a Hub mirror may
//! serve only `/{repo}/resolve/{revision}/{file}` and no repository listing.

use super::model_ref::check_repo_path;
use serde_json::Value;

/// Marks an MLC weight directory (compiled-model config with conv template and tokenizer list).
pub const MLC_CONFIG: &str = "mlc-chat-config.json";
/// Marks a Hugging Face transformers directory.
pub const HF_CONFIG: &str = "config.json";
/// MLC's tensor index, newest name first (`ndarray-cache.json` in older MLC repositories).
pub const TENSOR_CACHES: [&str; 2] = ["tensor-cache.json", "ndarray-cache.json"];
/// Sharded safetensors index first, then the single-file checkpoint.
pub const SAFETENSORS: [&str; 2] = ["model.safetensors.index.json", "model.safetensors"];
pub const SAFETENSORS_INDEX: &str = SAFETENSORS[0];

/// Files an MLC directory may have besides the ones its config lists.
pub const MLC_OPTIONAL: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"];
/// Tokenizer and generation defaults of an HF directory; each may be absent.
pub const HF_OPTIONAL: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"];

/// `tokenizer_files` of `mlc-chat-config.json` (absent means none listed).
pub fn mlc_tokenizer_files(mlc_chat_config: &Value) -> Result<Vec<String>, String> {
    match mlc_chat_config.get("tokenizer_files") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(files)) => {
            let names = files.iter().map(|f| f.as_str().ok_or("tokenizer_files must hold strings"));
            unique_paths(names.map(|n| n.map_err(String::from)))
        }
        Some(_) => Err("tokenizer_files must be a list of file names".to_string()),
    }
}

/// The shard files of `tensor-cache.json` / `ndarray-cache.json`: each record's `dataPath`.
pub fn tensor_cache_shards(tensor_cache: &Value) -> Result<Vec<String>, String> {
    let records = tensor_cache.get("records").and_then(Value::as_array).ok_or("no \"records\" list")?;
    let paths = records
        .iter()
        .map(|r| r.get("dataPath").and_then(Value::as_str).ok_or_else(|| "a record has no \"dataPath\"".to_string()));
    non_empty(unique_paths(paths)?, "records")
}

/// The shard files named by `model.safetensors.index.json`'s `weight_map`.
pub fn safetensors_index_shards(index: &Value) -> Result<Vec<String>, String> {
    let map = index.get("weight_map").and_then(Value::as_object).ok_or("no \"weight_map\" object")?;
    let paths = map.values().map(|v| v.as_str().ok_or_else(|| "weight_map values must be file names".to_string()));
    let mut shards = unique_paths(paths)?;
    shards.sort();
    non_empty(shards, "weight_map")
}

/// First occurrence order, each name checked to stay inside the repository.
fn unique_paths<'a>(paths: impl Iterator<Item = Result<&'a str, String>>) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for path in paths {
        let path = path?;
        check_repo_path(path)?;
        if !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
    }
    Ok(out)
}

fn non_empty(files: Vec<String>, what: &str) -> Result<Vec<String>, String> {
    if files.is_empty() {
        Err(format!("\"{what}\" names no file"))
    } else {
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tensor_cache_records_give_their_shards() {
        // Shape of tvmjs.dump_tensor_cache's output: one record per shard, tensors inside.
        let cache = json!({
            "metadata": {"ParamSize": 3, "ParamBytes": 96.0, "BitsPerParam": 16.0},
            "records": [
                {"dataPath": "params_shard_0.bin", "format": "raw-shard", "nbytes": 64, "md5sum": "x",
                 "records": [{"name": "a", "shape": [4, 8], "dtype": "float16", "format": "f32-to-bf16",
                              "nbytes": 64, "byteOffset": 0}]},
                {"dataPath": "params_shard_1.bin", "format": "raw-shard", "nbytes": 32, "md5sum": "y",
                 "records": []}
            ]
        });
        assert_eq!(tensor_cache_shards(&cache).expect("shards"), ["params_shard_0.bin", "params_shard_1.bin"]);
        assert!(tensor_cache_shards(&json!({"records": []})).is_err());
        assert!(tensor_cache_shards(&json!({"records": [{"dataPath": "../x.bin"}]})).is_err());
        assert!(tensor_cache_shards(&json!({"metadata": {}})).is_err());
    }

    #[test]
    fn safetensors_index_names_each_shard_once() {
        let index = json!({
            "metadata": {"total_size": 10},
            "weight_map": {
                "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                "lm_head.weight": "model-00002-of-00002.safetensors",
                "model.norm.weight": "model-00001-of-00002.safetensors"
            }
        });
        assert_eq!(
            safetensors_index_shards(&index).expect("shards"),
            ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        );
        assert!(safetensors_index_shards(&json!({"weight_map": {"w": "/abs.safetensors"}})).is_err());
        assert!(safetensors_index_shards(&json!({"weight_map": {}})).is_err());
    }

    #[test]
    fn mlc_tokenizer_files_are_listed_names() {
        let config = json!({"tokenizer_files": ["tokenizer.json", "tokenizer_config.json", "tokenizer.json"]});
        assert_eq!(mlc_tokenizer_files(&config).expect("files"), ["tokenizer.json", "tokenizer_config.json"]);
        assert!(mlc_tokenizer_files(&json!({})).expect("none").is_empty());
        assert!(mlc_tokenizer_files(&json!({"tokenizer_files": "tokenizer.json"})).is_err());
        assert!(mlc_tokenizer_files(&json!({"tokenizer_files": [1]})).is_err());
    }
}
