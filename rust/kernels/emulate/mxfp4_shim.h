// CPU stand-in for the one intrinsic mxfp4_dequant.cuh uses beyond q4_shim.h: the funnel shift
// (hi:lo >> (shift & 31), the low 32 bits; PTX shf.r.wrap).
#pragma once
#include <stdint.h>

inline uint32_t __funnelshift_r(uint32_t lo, uint32_t hi, uint32_t shift) {
    return (uint32_t)((((uint64_t)hi << 32) | lo) >> (shift & 31));
}
