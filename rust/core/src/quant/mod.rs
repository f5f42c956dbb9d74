//! Weight quantization formats that are ours to read and write (GGUF's come from candle).

pub mod group4;
