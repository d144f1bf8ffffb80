#!/usr/bin/env bash
# How fast tract's AVX-512 f32 matrix-product inner loops can run on this CPU when their
# operands sit in the L1 cache (a measurement, not a test; README "Where tract loses"):
#   scripts/kernel_loop_bench.sh
# The loop bodies are those of tract-linalg 0.23.9's avx512_mmm_f32_16x12 and _32x6 (one
# aligned load of A per 16 rows, one broadcast of B per column, one FMA per accumulator),
# plus 32x12 and 48x8 tiles tract does not have, run 12.8 M k-steps over 64 steps of data.
# Needs gcc and an AVX-512 CPU. Prints GFLOP/s per tile, twice.
set -euo pipefail
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
python3 - > "$dir/k.S" <<'PY'
print(".intel_syntax noprefix\n.text")
for name, mz, nr in [("k16x12", 1, 12), ("k32x6", 2, 6), ("k32x12", 2, 12), ("k48x8", 3, 8)]:
    body = [f"vmovaps zmm{30 - r}, [rax + {r * 64}]" for r in range(mz)]
    for c in range(nr):
        body.append(f"vbroadcastss zmm31, dword ptr [rcx + {c * 4}]")
        body += [f"vfmadd231ps zmm{c * mz + r}, zmm{30 - r}, zmm31" for r in range(mz)]
    body += [f"add rax, {mz * 64}", f"add rcx, {nr * 4}"]
    print(f"""
.globl {name}
{name}:  /* rdi = k-steps (multiple of 64), rsi = A, rdx = B */
  push rbx
  mov rbx, rdi
1:
  mov rax, rsi
  mov rcx, rdx
  mov r8, 64
2:
""" + "\n".join(body) + """
  dec r8
  jnz 2b
  sub rbx, 64
  jg 1b
  pop rbx
  ret""")
print('.section .note.GNU-stack,"",@progbits')
PY
cat > "$dir/main.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
void k16x12(long, float *, float *); void k32x6(long, float *, float *);
void k32x12(long, float *, float *); void k48x8(long, float *, float *);
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(void) {
  float *a = aligned_alloc(64, 1 << 16), *b = aligned_alloc(64, 1 << 16);
  for (int i = 0; i < (1 << 14); i++) a[i] = b[i] = 1e-3f;
  struct { const char *n; void (*f)(long, float *, float *); int mr, nr; } k[] = {
    {"16x12", k16x12, 16, 12}, {"32x6", k32x6, 32, 6}, {"32x12", k32x12, 32, 12}, {"48x8", k48x8, 48, 8}};
  for (int rep = 0; rep < 2; rep++)
    for (int i = 0; i < 4; i++) {
      long steps = 64L * 200000; double t = now(); k[i].f(steps, a, b); t = now() - t;
      printf("%s %.1f GFLOP/s\n", k[i].n, 2.0 * k[i].mr * k[i].nr * steps / t / 1e9);
    }
  return 0;
}
C
gcc -O2 "$dir/main.c" "$dir/k.S" -o "$dir/bench"
"$dir/bench"
