/*
 * Rates of 512-bit (and 256-bit) vector operations on an x86-64 machine with AVX-512: FMAs,
 * adds and multiplies, loads and stores, each on 64-byte-aligned addresses and on addresses 16
 * bytes past a line (every access straddles two cache lines, as a vector does in an array that
 * the system allocator placed 16 bytes past a line). Without hardware counters (the VMs here
 * report none), these are what the backward loop's time can be compared with.
 *
 *   gcc -O2 -o x86_vector_rates scripts/x86_vector_rates.c && ./x86_vector_rates
 *
 * Each line prints operations per nanosecond (independent operations, all in L1; the loop's
 * own counter and branch are not counted). Compare the lines with each other, not with another
 * machine's; run it twice on a shared machine.
 */
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float buffer[4096] __attribute__((aligned(64)));

#define CLOBBER "rcx", "rdx", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", \
    "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12"

static void report(const char *what, long operations, double start) {
    double seconds = now() - start;
    printf("%-34s %6.2f per ns\n", what, operations / seconds / 1e9);
}

int main(void) {
    const long n = 240000000L; /* operations per measurement */
    double start;

    start = now();
    __asm__ volatile(
        "vxorps %%zmm0,%%zmm0,%%zmm0\n mov %0,%%rcx\n mov %1,%%rdx\n"
        "1:\n"
        "vfmadd231ps %%zmm0,%%zmm0,%%zmm1\n vfmadd231ps %%zmm0,%%zmm0,%%zmm2\n"
        "vfmadd231ps %%zmm0,%%zmm0,%%zmm3\n vfmadd231ps %%zmm0,%%zmm0,%%zmm4\n"
        "vfmadd231ps %%zmm0,%%zmm0,%%zmm5\n vfmadd231ps %%zmm0,%%zmm0,%%zmm6\n"
        "vfmadd231ps %%zmm0,%%zmm0,%%zmm7\n vfmadd231ps %%zmm0,%%zmm0,%%zmm8\n"
        "vfmadd231ps %%zmm0,%%zmm0,%%zmm9\n vfmadd231ps %%zmm0,%%zmm0,%%zmm10\n"
        "vfmadd231ps %%zmm0,%%zmm0,%%zmm11\n vfmadd231ps %%zmm0,%%zmm0,%%zmm12\n"
        "dec %%rcx\n jnz 1b\n" ::"r"(n / 12), "r"(buffer) : CLOBBER);
    report("512-bit FMA", n, start);

    start = now();
    __asm__ volatile(
        "vxorps %%ymm0,%%ymm0,%%ymm0\n mov %0,%%rcx\n mov %1,%%rdx\n"
        "1:\n"
        "vfmadd231ps %%ymm0,%%ymm0,%%ymm1\n vfmadd231ps %%ymm0,%%ymm0,%%ymm2\n"
        "vfmadd231ps %%ymm0,%%ymm0,%%ymm3\n vfmadd231ps %%ymm0,%%ymm0,%%ymm4\n"
        "vfmadd231ps %%ymm0,%%ymm0,%%ymm5\n vfmadd231ps %%ymm0,%%ymm0,%%ymm6\n"
        "vfmadd231ps %%ymm0,%%ymm0,%%ymm7\n vfmadd231ps %%ymm0,%%ymm0,%%ymm8\n"
        "vfmadd231ps %%ymm0,%%ymm0,%%ymm9\n vfmadd231ps %%ymm0,%%ymm0,%%ymm10\n"
        "vfmadd231ps %%ymm0,%%ymm0,%%ymm11\n vfmadd231ps %%ymm0,%%ymm0,%%ymm12\n"
        "dec %%rcx\n jnz 1b\n" ::"r"(n / 12), "r"(buffer) : CLOBBER);
    report("256-bit FMA", n, start);

    start = now();
    __asm__ volatile(
        "vxorps %%zmm0,%%zmm0,%%zmm0\n mov %0,%%rcx\n mov %1,%%rdx\n"
        "1:\n"
        "vaddps %%zmm0,%%zmm0,%%zmm1\n vaddps %%zmm0,%%zmm0,%%zmm2\n"
        "vmulps %%zmm0,%%zmm0,%%zmm3\n vsubps %%zmm0,%%zmm0,%%zmm4\n"
        "vaddps %%zmm0,%%zmm0,%%zmm5\n vaddps %%zmm0,%%zmm0,%%zmm6\n"
        "vmulps %%zmm0,%%zmm0,%%zmm7\n vsubps %%zmm0,%%zmm0,%%zmm8\n"
        "vaddps %%zmm0,%%zmm0,%%zmm9\n vaddps %%zmm0,%%zmm0,%%zmm10\n"
        "vmulps %%zmm0,%%zmm0,%%zmm11\n vsubps %%zmm0,%%zmm0,%%zmm12\n"
        "dec %%rcx\n jnz 1b\n" ::"r"(n / 12), "r"(buffer) : CLOBBER);
    report("512-bit add/sub/mul", n, start);

#define LOADS(o)                                                                     \
    "vmovups " #o "+0(%%rdx),%%zmm1\n vmovups " #o "+64(%%rdx),%%zmm2\n"             \
    "vmovups " #o "+128(%%rdx),%%zmm3\n vmovups " #o "+192(%%rdx),%%zmm4\n"          \
    "vmovups " #o "+256(%%rdx),%%zmm5\n vmovups " #o "+320(%%rdx),%%zmm6\n"          \
    "vmovups " #o "+384(%%rdx),%%zmm7\n vmovups " #o "+448(%%rdx),%%zmm8\n"
#define STORES(o)                                                                    \
    "vmovups %%zmm1," #o "+0(%%rdx)\n vmovups %%zmm2," #o "+64(%%rdx)\n"             \
    "vmovups %%zmm3," #o "+128(%%rdx)\n vmovups %%zmm4," #o "+192(%%rdx)\n"

    start = now();
    __asm__ volatile("mov %0,%%rcx\n mov %1,%%rdx\n1:\n" LOADS(0) "dec %%rcx\n jnz 1b\n"
                     ::"r"(n / 8), "r"(buffer) : CLOBBER);
    report("512-bit load, aligned", n, start);

    start = now();
    __asm__ volatile("mov %0,%%rcx\n mov %1,%%rdx\n1:\n" LOADS(16) "dec %%rcx\n jnz 1b\n"
                     ::"r"(n / 8), "r"(buffer) : CLOBBER);
    report("512-bit load, straddling lines", n, start);

    start = now();
    __asm__ volatile("mov %0,%%rcx\n mov %1,%%rdx\n1:\n" STORES(0) "dec %%rcx\n jnz 1b\n"
                     ::"r"(n / 4), "r"(buffer) : CLOBBER);
    report("512-bit store, aligned", n, start);

    start = now();
    __asm__ volatile("mov %0,%%rcx\n mov %1,%%rdx\n1:\n" STORES(16) "dec %%rcx\n jnz 1b\n"
                     ::"r"(n / 4), "r"(buffer) : CLOBBER);
    report("512-bit store, straddling lines", n, start);
    return 0;
}
