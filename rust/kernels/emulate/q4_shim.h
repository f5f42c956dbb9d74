// CPU stand-ins for the f16 pair arithmetic q4_gemm_tc.cu uses beyond attention_shim.h: each lane of the
// pair rounded once to f16, as the hardware's HSUB2 / HMUL2 do.
#pragma once
#include "attention_shim.h"

inline Dim gridDim;  // set by the driver's launch
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline __half2 __hsub2(__half2 a, __half2 b) {
    return {__float2half(__half2float(a.x) - __half2float(b.x)), __float2half(__half2float(a.y) - __half2float(b.y))};
}
inline __half2 __hmul2(__half2 a, __half2 b) {
    return {__float2half(__half2float(a.x) * __half2float(b.x)), __float2half(__half2float(a.y) * __half2float(b.y))};
}
