//! GGUF tensors of ggml type MXFP4 (39, llama.cpp's gpt-oss experts), which candle's GGUF reader does not
//! know: it refuses the whole file at that type. A file with none is read by candle alone, as before. A
//! file with some is walked once to find them; candle then reads a copy of the header in which their type
//! reads F32, and those tensors are taken out of its table and kept here with their real type.

use candle_core::quantized::gguf_file;
use std::collections::HashMap;
use std::io::{Cursor, Read, Seek, SeekFrom};

const MXFP4: u32 = 39;
const F32: u32 = 0;
/// candle's and llama.cpp's caps (GGUF_MAX_STRING_LENGTH / GGUF_MAX_ARRAY_ELEMENTS, nesting).
const MAX_LEN: u64 = 1 << 30;
const MAX_DEPTH: usize = 64;

/// An MXFP4 tensor: dimensions rows first (`[experts, out, in]`, as candle orders shapes), its offset
/// from the start of the tensor data.
#[derive(Debug, Clone)]
pub struct Mxfp4Info {
    pub dims: Vec<usize>,
    pub offset: u64,
}

impl Mxfp4Info {
    /// Bytes in the file: rows of whole 32-value blocks of 17 bytes (`None`: rows not whole blocks, or
    /// too large).
    pub fn bytes(&self) -> Option<u64> {
        let elems = self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).filter(|&n| n <= 1 << 40)?;
        (self.dims.last()? % 32 == 0).then(|| elems / 32 * crate::quant::mxfp4::GGML_BLOCK_BYTES as u64)
    }
}

/// The file's header as candle reads it, plus its MXFP4 tensors (empty for most files).
pub fn read_content<R: Read + Seek>(file: &mut R) -> candle_core::Result<(gguf_file::Content, HashMap<String, Mxfp4Info>)> {
    let found = scan(file).ok().filter(|s| !s.mxfp4.is_empty());
    file.seek(SeekFrom::Start(0))?;
    let Some(scan) = found else {
        return Ok((gguf_file::Content::read(file)?, HashMap::new()));
    };
    let mut header = vec![0u8; scan.header_len as usize];
    file.read_exact(&mut header)?;
    for (_, at, _) in &scan.mxfp4 {
        header[*at as usize..*at as usize + 4].copy_from_slice(&F32.to_le_bytes());
    }
    let mut content = gguf_file::Content::read(&mut Cursor::new(header))?;
    let mut infos = HashMap::new();
    for (name, _, info) in scan.mxfp4 {
        content.tensor_infos.remove(&name);
        infos.insert(name, info);
    }
    Ok((content, infos))
}

struct Scan {
    /// Per MXFP4 tensor: its name, where its type field sits in the file, its shape and offset.
    mxfp4: Vec<(String, u64, Mxfp4Info)>,
    /// Bytes up to the end of the tensor infos.
    header_len: u64,
}

/// Walks the header (metadata skipped, tensor infos read). Any error means "let candle read it": candle
/// then reports what is wrong with the file.
fn scan<R: Read + Seek>(r: &mut R) -> std::io::Result<Scan> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let file_len = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    if u32_le(r)? != 0x4655_4747 {
        return Err(bad("not GGUF"));
    }
    let v1 = match u32_le(r)? {
        1 => true,
        2 | 3 => false,
        _ => return Err(bad("version")),
    };
    let len = |r: &mut R| -> std::io::Result<u64> { if v1 { u32_le(r).map(u64::from) } else { u64_le(r) } };
    let (tensors, kvs) = (len(r)?, len(r)?);
    if tensors > MAX_LEN || kvs > MAX_LEN {
        return Err(bad("counts"));
    }
    for _ in 0..kvs {
        skip_string(r, &len, file_len)?;
        let t = u32_le(r)?;
        skip_value(r, t, &len, file_len, 0)?;
    }
    let mut mxfp4 = Vec::new();
    for _ in 0..tensors {
        let n = len(r)?;
        if n > MAX_LEN || n > file_len {
            return Err(bad("name"));
        }
        let mut name = vec![0u8; n as usize];
        r.read_exact(&mut name)?;
        let nd = u32_le(r)?;
        if nd > 4 {
            return Err(bad("dims"));
        }
        let mut dims = (0..nd).map(|_| len(r).map(|d| d as usize)).collect::<std::io::Result<Vec<_>>>()?;
        dims.reverse();
        let at = r.stream_position()?;
        let ty = u32_le(r)?;
        let offset = u64_le(r)?;
        if ty == MXFP4 {
            mxfp4.push((String::from_utf8_lossy(&name).into_owned(), at, Mxfp4Info { dims, offset }));
        }
    }
    Ok(Scan { mxfp4, header_len: r.stream_position()? })
}

fn u32_le<R: Read>(r: &mut R) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_le<R: Read>(r: &mut R) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn skip<R: Seek>(r: &mut R, n: u64, file_len: u64) -> std::io::Result<()> {
    let at = r.stream_position()?;
    if n > file_len.saturating_sub(at) {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the end"));
    }
    r.seek(SeekFrom::Current(n as i64)).map(|_| ())
}

fn skip_string<R: Read + Seek>(r: &mut R, len: &dyn Fn(&mut R) -> std::io::Result<u64>, file_len: u64) -> std::io::Result<()> {
    let n = len(r)?;
    skip(r, n, file_len)
}

/// Skips one metadata value of GGUF value type `t`.
fn skip_value<R: Read + Seek>(r: &mut R, t: u32, len: &dyn Fn(&mut R) -> std::io::Result<u64>, file_len: u64, depth: usize) -> std::io::Result<()> {
    let fixed = |t: u32| match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    match t {
        8 => skip_string(r, len, file_len),
        9 if depth < MAX_DEPTH => {
            let item = u32_le(r)?;
            let n = len(r)?;
            if n > MAX_LEN {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "array length"));
            }
            match fixed(item) {
                Some(size) => skip(r, n * size, file_len),
                None => (0..n).try_for_each(|_| skip_value(r, item, len, file_len, depth + 1)),
            }
        }
        _ => match fixed(t) {
            Some(size) => skip(r, size, file_len),
            None => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "value type")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models").join(name);
        std::fs::read(dir.join(format!("{name}.gguf"))).unwrap()
    }

    #[test]
    fn mxfp4_tensors_are_kept_apart_and_other_files_read_as_candle_reads_them() {
        let (content, mx) = read_content(&mut Cursor::new(fixture("gpt_oss_mxfp4"))).unwrap();
        // 4 layers x gate / up / down.
        assert_eq!(mx.len(), 12);
        assert_eq!(mx["blk.0.ffn_gate_exps.weight"].dims, [8, 64, 64]);
        assert_eq!(mx["blk.3.ffn_down_exps.weight"].bytes(), Some(8 * 64 * 2 * 17));
        assert!(mx.keys().all(|k| !content.tensor_infos.contains_key(k)));
        assert!(content.tensor_infos.contains_key("blk.0.ffn_gate_exps.bias"));
        let (f32_file, none) = read_content(&mut Cursor::new(fixture("gpt_oss"))).unwrap();
        assert!(none.is_empty() && f32_file.tensor_infos.contains_key("blk.0.ffn_gate_exps.weight"));
    }

    #[test]
    fn a_damaged_tensor_table_is_an_error_or_a_file_never_a_panic() {
        // Every byte of the tensor infos (the end of the header) flipped or overwritten with boundary words.
        let bytes = fixture("gpt_oss_mxfp4");
        let (content, _) = read_content(&mut Cursor::new(bytes.clone())).unwrap();
        let end = scan(&mut Cursor::new(&bytes)).unwrap().header_len as usize;
        let start = end - content.tensor_infos.len().max(80) * 48;
        for at in (start..end).step_by(3) {
            for edit in [0x01u64, 0x80, u64::MAX, 1 << 40] {
                let mut b = bytes.clone();
                if edit <= 0xFF {
                    b[at] ^= edit as u8;
                } else {
                    let n = 8.min(b.len() - at);
                    b[at..at + n].copy_from_slice(&edit.to_le_bytes()[..n]);
                }
                if let Ok((c, mx)) = read_content(&mut Cursor::new(&b)) {
                    for info in mx.values() {
                        let _ = info.bytes();
                    }
                    assert!(mx.keys().all(|k| !c.tensor_infos.contains_key(k)));
                }
            }
        }
    }
}
