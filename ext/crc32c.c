/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78).
 * x86-64: SSE4.2 crc32 instruction; ARMv8: CRC extension; else slicing-by-8 tables.
 * The instruction is chosen once, at first use, from what the running CPU reports. */
#include "crc32c.h"
#include <string.h>

#define POLY 0x82F63B78u

static uint32_t table[8][256];
static int table_ready = 0;

static void make_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = table[0][n];
        for (int t = 1; t < 8; t++) {
            c = table[0][c & 0xff] ^ (c >> 8);
            table[t][n] = c;
        }
    }
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

uint32_t tl_crc32c_sw(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = (const unsigned char *)buf;
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE)) make_table();
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) { crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8); len--; }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        w ^= crc;
        crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
              table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
              table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8; len -= 8;
    }
    while (len--) crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define TL_HAVE_HW 1
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = (const unsigned char *)buf;
    uint64_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) { c = _mm_crc32_u8((uint32_t)c, *p++); len--; }
    while (len >= 32) {
        uint64_t a, b, d, e;
        memcpy(&a, p, 8); memcpy(&b, p + 8, 8); memcpy(&d, p + 16, 8); memcpy(&e, p + 24, 8);
        c = _mm_crc32_u64(c, a); c = _mm_crc32_u64(c, b);
        c = _mm_crc32_u64(c, d); c = _mm_crc32_u64(c, e);
        p += 32; len -= 32;
    }
    while (len >= 8) { uint64_t a; memcpy(&a, p, 8); c = _mm_crc32_u64(c, a); p += 8; len -= 8; }
    while (len--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
static int cpu_has_hw(void) { __builtin_cpu_init(); return __builtin_cpu_supports("sse4.2"); }
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw_u32(uint32_t v) { return ~_mm_crc32_u32(0xFFFFFFFFu, v); }

#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define TL_HAVE_HW 1
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
static int cpu_has_hw(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#elif defined(__APPLE__)
static int cpu_has_hw(void) { return 1; } /* every Apple arm64 CPU has the CRC extension */
#else
static int cpu_has_hw(void) { return 0; }
#endif
__attribute__((target("+crc")))
static uint32_t crc32c_hw_u32(uint32_t v) { return ~__builtin_aarch64_crc32cw(0xFFFFFFFFu, v); }
__attribute__((target("+crc")))
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = (const unsigned char *)buf;
    uint32_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) { c = __builtin_aarch64_crc32cb(c, *p++); len--; }
    while (len >= 8) { uint64_t a; memcpy(&a, p, 8); c = __builtin_aarch64_crc32cx(c, a); p += 8; len -= 8; }
    while (len--) c = __builtin_aarch64_crc32cb(c, *p++);
    return ~c;
}
#endif

/* 0 = not decided yet, 1 = hardware, 2 = table */
static int mode = 0;

static int decide(void) {
    int m = 2;
#ifdef TL_HAVE_HW
    if (cpu_has_hw()) m = 1;
#endif
    __atomic_store_n(&mode, m, __ATOMIC_RELAXED);
    return m;
}

int tl_crc32c_hw(void) {
    int m = __atomic_load_n(&mode, __ATOMIC_RELAXED);
    if (!m) m = decide();
    return m == 1;
}

uint32_t tl_crc32c_u32(uint32_t v) {
    int m = __atomic_load_n(&mode, __ATOMIC_RELAXED);
    if (!m) m = decide();
#ifdef TL_HAVE_HW
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__)
    if (m == 1) return crc32c_hw_u32(v);
#endif
#endif
    {
        unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                              (unsigned char)(v >> 24)};
        return tl_crc32c_sw(0, b, 4);
    }
}

uint32_t tl_crc32c(uint32_t crc, const void *buf, size_t len) {
    int m = __atomic_load_n(&mode, __ATOMIC_RELAXED);
    if (!m) m = decide();
#ifdef TL_HAVE_HW
    if (m == 1) return crc32c_hw(crc, buf, len);
#endif
    return tl_crc32c_sw(crc, buf, len);
}
