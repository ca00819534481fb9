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

/* Twelve independent FMAs on registers of width W ("z": 512 bits, "y": 256 bits). */
#define FMA(W, r) "vfmadd231ps %%" W "mm0,%%" W "mm0,%%" W "mm" #r "\n"
#define FMAS(W)                                                                      \
    "vxorps %%" W "mm0,%%" W "mm0,%%" W "mm0\n mov %0,%%rcx\n mov %1,%%rdx\n1:\n"       \
    FMA(W, 1) FMA(W, 2) FMA(W, 3) FMA(W, 4) FMA(W, 5) FMA(W, 6)                       \
    FMA(W, 7) FMA(W, 8) FMA(W, 9) FMA(W, 10) FMA(W, 11) FMA(W, 12)                    \
    "dec %%rcx\n jnz 1b\n"

    start = now();
    __asm__ volatile(FMAS("z") ::"r"(n / 12), "r"(buffer) : CLOBBER);
    report("512-bit FMA", n, start);

    start = now();
    __asm__ volatile(FMAS("y") ::"r"(n / 12), "r"(buffer) : CLOBBER);
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

/* Eight loads, or four stores, of 64 bytes from the address in rdx. */
#define LOADS                                                                        \
    "vmovups 0(%%rdx),%%zmm1\n vmovups 64(%%rdx),%%zmm2\n"                           \
    "vmovups 128(%%rdx),%%zmm3\n vmovups 192(%%rdx),%%zmm4\n"                        \
    "vmovups 256(%%rdx),%%zmm5\n vmovups 320(%%rdx),%%zmm6\n"                        \
    "vmovups 384(%%rdx),%%zmm7\n vmovups 448(%%rdx),%%zmm8\n"
#define STORES                                                                       \
    "vmovups %%zmm1,0(%%rdx)\n vmovups %%zmm2,64(%%rdx)\n"                           \
    "vmovups %%zmm3,128(%%rdx)\n vmovups %%zmm4,192(%%rdx)\n"

    /* At the start of a line, then 16 bytes past it (every access straddles two lines). */
    for (int offset = 0; offset <= 16; offset += 16) {
        const char *where = offset ? "straddling lines" : "aligned";
        char *at = (char *)buffer + offset;
        char what[64];

        start = now();
        __asm__ volatile("mov %0,%%rcx\n mov %1,%%rdx\n1:\n" LOADS "dec %%rcx\n jnz 1b\n"
                         ::"r"(n / 8), "r"(at) : CLOBBER);
        snprintf(what, sizeof what, "512-bit load, %s", where);
        report(what, n, start);

        start = now();
        __asm__ volatile("mov %0,%%rcx\n mov %1,%%rdx\n1:\n" STORES "dec %%rcx\n jnz 1b\n"
                         ::"r"(n / 4), "r"(at) : CLOBBER);
        snprintf(what, sizeof what, "512-bit store, %s", where);
        report(what, n, start);
    }
    return 0;
}
