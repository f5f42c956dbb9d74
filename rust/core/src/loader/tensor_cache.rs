//! MLC's parameter store: `tensor-cache.json` (older directories: `ndarray-cache.json`, the same schema) that
//! lists `params_shard_*.bin` files, each holding raw tensors at byte offsets. Reading checks every shard's
//! size and md5 before any tensor is used; writing packs tensors into shards of at most 32 MB the way TVM's
//! `dump_tensor_cache` does, so MLC's own runtime can read what we write.

use crate::error::{EngineError, Result};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The index file names, newest first.
pub const INDEX_FILES: [&str; 2] = ["tensor-cache.json", "ndarray-cache.json"];
/// TVM's shard cap; a tensor of at least half of it gets a shard of its own.
pub const SHARD_CAP_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CacheMetadata {
    #[serde(rename = "ParamSize")]
    pub param_size: u64,
    #[serde(rename = "ParamBytes")]
    pub param_bytes: f64,
    #[serde(rename = "BitsPerParam")]
    pub bits_per_param: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ParamRecord {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    /// `raw`, or `f32-to-bf16`: a float32 parameter stored as the top 16 bits of each value.
    pub format: String,
    pub nbytes: usize,
    #[serde(rename = "byteOffset")]
    pub byte_offset: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardRecord {
    #[serde(rename = "dataPath")]
    pub data_path: String,
    pub format: String,
    pub nbytes: usize,
    pub records: Vec<ParamRecord>,
    #[serde(rename = "md5sum", default, skip_serializing_if = "Option::is_none")]
    pub md5sum: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorCache {
    pub metadata: CacheMetadata,
    pub records: Vec<ShardRecord>,
}

/// One parameter as stored: its dtype name as MLC writes it (`float16`, `uint32`, ...), shape, and bytes
/// (already widened to float32 when the record was `f32-to-bf16`).
#[derive(Debug, Clone)]
pub struct RawParam {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// The index file of `dir`, preferring `tensor-cache.json`.
pub fn index_path(dir: &Path) -> Result<PathBuf> {
    INDEX_FILES.iter().map(|f| dir.join(f)).find(|p| p.exists()).ok_or_else(|| {
        EngineError::model_load(dir.display().to_string(), "neither tensor-cache.json nor ndarray-cache.json is present")
    })
}

pub fn read_index(path: &Path) -> Result<TensorCache> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::model_load(&shown, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| EngineError::model_load(&shown, format!("invalid tensor cache index: {e}")))
}

/// Every parameter of the directory's tensor cache by name, after checking each shard.
pub fn read_params(dir: &Path) -> Result<HashMap<String, RawParam>> {
    let cache = read_index(&index_path(dir)?)?;
    let mut params = HashMap::new();
    for shard in &cache.records {
        let data = read_shard(dir, shard)?;
        for rec in &shard.records {
            let shown = || dir.join(&shard.data_path).display().to_string();
            let end = rec.byte_offset.checked_add(rec.nbytes).filter(|&e| e <= data.len()).ok_or_else(|| {
                EngineError::model_load(shown(), format!("parameter {} lies outside the shard ({} bytes)", rec.name, data.len()))
            })?;
            let bytes = decode(&data[rec.byte_offset..end], rec).map_err(|m| EngineError::model_load(shown(), m))?;
            params.insert(rec.name.clone(), RawParam { dtype: rec.dtype.clone(), shape: rec.shape.clone(), bytes });
        }
    }
    Ok(params)
}

fn read_shard(dir: &Path, shard: &ShardRecord) -> Result<Vec<u8>> {
    let path = dir.join(&shard.data_path);
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(EngineError::model_load(shown, "shard listed in the tensor cache is missing"));
    }
    let data = std::fs::read(&path).map_err(|e| EngineError::model_load(&shown, e.to_string()))?;
    if data.len() != shard.nbytes {
        return Err(EngineError::model_load(
            shown,
            format!("shard has {} bytes, the tensor cache says {} (truncated or replaced?)", data.len(), shard.nbytes),
        ));
    }
    if let Some(want) = &shard.md5sum {
        let got = md5_hex(&data);
        if !got.eq_ignore_ascii_case(want) {
            return Err(EngineError::model_load(shown, format!("md5 mismatch: file {got}, tensor cache {want}")));
        }
    }
    Ok(data)
}

fn decode(stored: &[u8], rec: &ParamRecord) -> std::result::Result<Vec<u8>, String> {
    // Checked: a corrupt record's shape must not wrap around to a size that happens to match.
    let size = |elem: usize| rec.shape.iter().try_fold(elem, |a, &d| a.checked_mul(d));
    match rec.format.as_str() {
        "raw" => {
            let elem = dtype_size(&rec.dtype).ok_or_else(|| format!("parameter {}: unknown dtype {}", rec.name, rec.dtype))?;
            if size(elem) != Some(stored.len()) {
                return Err(format!("parameter {}: {} bytes for shape {:?} {}", rec.name, stored.len(), rec.shape, rec.dtype));
            }
            Ok(stored.to_vec())
        }
        "f32-to-bf16" => {
            if rec.dtype != "float32" || size(2) != Some(stored.len()) {
                return Err(format!("parameter {}: f32-to-bf16 record of {} bytes for {:?} {}", rec.name, stored.len(), rec.shape, rec.dtype));
            }
            Ok(stored.chunks_exact(2).flat_map(|b| [0, 0, b[0], b[1]]).collect())
        }
        other => Err(format!("parameter {}: unknown record format {other:?}", rec.name)),
    }
}

/// Bytes per element of the dtypes MLC stores.
pub fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "float32" | "uint32" | "int32" => 4,
        "float16" | "bfloat16" | "uint16" | "int16" => 2,
        "uint8" | "int8" | "e4m3_float8" | "e5m2_float8" => 1,
        "float64" | "int64" | "uint64" => 8,
        _ => return None,
    })
}

pub fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes parameters into `params_shard_{i}.bin` files and, at [`CacheWriter::finish`], the index.
/// Sharding follows TVM: a tensor that does not fit beside the pending ones closes the pending shard, unless
/// it is at least half the cap, in which case it gets a shard of its own and the pending shard stays open.
pub struct CacheWriter {
    dir: PathBuf,
    shards: Vec<ShardRecord>,
    pending: Vec<u8>,
    pending_records: Vec<ParamRecord>,
    num_params: u64,
    param_bytes: u64,
}

impl CacheWriter {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(CacheWriter { dir: dir.to_path_buf(), shards: Vec::new(), pending: Vec::new(), pending_records: Vec::new(), num_params: 0, param_bytes: 0 })
    }

    /// Adds one parameter stored as-is (`format: raw`). Parameters are written in the order added.
    pub fn add(&mut self, name: &str, dtype: &str, shape: &[usize], bytes: &[u8]) -> Result<()> {
        self.num_params += 1;
        self.param_bytes += bytes.len() as u64;
        let record = |offset| ParamRecord {
            name: name.to_string(),
            shape: shape.to_vec(),
            dtype: dtype.to_string(),
            format: "raw".to_string(),
            nbytes: bytes.len(),
            byte_offset: offset,
        };
        if self.pending.len() + bytes.len() >= SHARD_CAP_BYTES {
            if bytes.len() * 2 >= SHARD_CAP_BYTES {
                return self.write_shard(bytes, vec![record(0)]);
            }
            self.flush()?;
        }
        self.pending_records.push(record(self.pending.len()));
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    fn write_shard(&mut self, data: &[u8], records: Vec<ParamRecord>) -> Result<()> {
        let data_path = format!("params_shard_{}.bin", self.shards.len());
        std::fs::write(self.dir.join(&data_path), data)?;
        self.shards.push(ShardRecord { data_path, format: "raw-shard".to_string(), nbytes: data.len(), records, md5sum: Some(md5_hex(data)) });
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending_records.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.pending);
        let records = std::mem::take(&mut self.pending_records);
        self.write_shard(&data, records)
    }

    /// Writes the last shard and `tensor-cache.json`; returns the index as written. `source_params` is the
    /// element count of the unquantized model (MLC's `BitsPerParam` divides the stored bits by it).
    pub fn finish(mut self, source_params: u64) -> Result<TensorCache> {
        self.flush()?;
        let bytes = self.param_bytes as f64;
        let bits = if source_params == 0 { 0.0 } else { bytes * 8.0 / source_params as f64 };
        let cache = TensorCache {
            metadata: CacheMetadata { param_size: self.num_params, param_bytes: bytes, bits_per_param: bits },
            records: self.shards,
        };
        let text = serde_json::to_string_pretty(&cache).map_err(|e| EngineError::Unsupported(e.to_string()))?;
        std::fs::write(self.dir.join(INDEX_FILES[0]), text)?;
        Ok(cache)
    }
}
