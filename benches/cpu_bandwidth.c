// Read bandwidth of this machine's cores (the floor of a batch-1 decode: every weight byte read once per
// token), for reading benches/bench_cpu.py's figures against:
//   gcc -O3 -mavx512f -fopenmp benches/cpu_bandwidth.c -o /tmp/bw && OMP_NUM_THREADS=2 /tmp/bw
// Sums a 1 GiB array with 512-bit loads, best of 6 passes.
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
#include <immintrin.h>
int main(){ size_t n = 1UL<<28; float *a = aligned_alloc(64, n*4); 
#pragma omp parallel for
for(size_t i=0;i<n;i++) a[i]=1.0f;
double best=1e9; float tot=0;
for(int r=0;r<6;r++){ double t=omp_get_wtime(); float s=0;
#pragma omp parallel for reduction(+:s)
for(size_t i=0;i<n;i+=16){ __m512 v=_mm512_load_ps(a+i); s+=_mm512_reduce_add_ps(v);} 
t=omp_get_wtime()-t; if(t<best)best=t; tot+=s;}
printf("threads %d: %.1f GB/s (%f)\n", omp_get_max_threads(), n*4/best/1e9, tot); }
