//! Weight quantization formats that are ours to read and write (GGUF's come from candle), and the CPU
//! kernels that multiply quantized weights.

pub mod cpu;
pub mod fp8;
pub mod mxfp4;
pub mod group4;
