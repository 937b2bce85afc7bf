/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78).
 * x86-64: SSE4.2 crc32 instruction; ARMv8: CRC extension; else slicing-by-8 tables.
 * The instruction is chosen once, at first use, from what the running CPU reports. */
#include "crc32c.h"
#include <stdlib.h>
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

/* Combining CRCs of adjacent blocks: advancing a CRC register over n zero bytes is linear over
 * GF(2), a 32x32 bit matrix; shift tables apply it a byte of the register at a time. Long inputs
 * are cut into three blocks whose CRCs run as three independent instruction chains (the crc32
 * instruction has a latency of 3 cycles and a throughput of 1), then combined. */
#define SHORT_BLOCK 256
#define LONG_BLOCK 8192
static uint32_t shift_short[4][256], shift_long[4][256];

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    for (int k = 0; vec; k++, vec >>= 1)
        if (vec & 1) sum ^= mat[k];
    return sum;
}

static void gf2_mul(uint32_t *out, const uint32_t *a, const uint32_t *b) {  /* out = a * b */
    uint32_t t[32];
    for (int k = 0; k < 32; k++) t[k] = gf2_times(a, b[k]);
    memcpy(out, t, sizeof t);
}

/* the operator advancing a register over n zero bytes */
static void zeros_operator(uint32_t *op, size_t n) {
    uint32_t byte[32], bit[32];
    bit[0] = POLY;                                   /* one zero bit */
    for (int k = 1; k < 32; k++) bit[k] = 1u << (k - 1);
    gf2_mul(byte, bit, bit);                         /* 2 bits */
    gf2_mul(byte, byte, byte);                       /* 4 bits */
    gf2_mul(byte, byte, byte);                       /* 8 bits: one byte */
    for (int k = 0; k < 32; k++) op[k] = 1u << k;    /* identity */
    while (n) {
        if (n & 1) gf2_mul(op, byte, op);
        gf2_mul(byte, byte, byte);
        n >>= 1;
    }
}

static void make_shift_table(uint32_t table[4][256], size_t n) {
    uint32_t op[32];
    zeros_operator(op, n);
    for (int j = 0; j < 4; j++)
        for (uint32_t b = 0; b < 256; b++) table[j][b] = gf2_times(op, b << (8 * j));
}

static inline uint32_t shift(uint32_t table[4][256], uint32_t c) {
    return table[0][c & 0xff] ^ table[1][(c >> 8) & 0xff] ^ table[2][(c >> 16) & 0xff] ^
           table[3][c >> 24];
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define TL_HAVE_HW 1
#define CRC64(c, p) _mm_crc32_u64((c), (p))
#define CRC8(c, b) _mm_crc32_u8((uint32_t)(c), (b))
#define CRC16(c, v) _mm_crc32_u16((uint32_t)(c), (v))
#define CRC32W(c, v) _mm_crc32_u32((uint32_t)(c), (v))
#define HW_TARGET __attribute__((target("sse4.2")))
static int cpu_has_hw(void) { __builtin_cpu_init(); return __builtin_cpu_supports("sse4.2"); }
HW_TARGET static uint32_t crc32c_hw_u32(uint32_t v) { return ~_mm_crc32_u32(0xFFFFFFFFu, v); }
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
#define CRC64(c, p) __builtin_aarch64_crc32cx((uint32_t)(c), (p))
#define CRC8(c, b) __builtin_aarch64_crc32cb((uint32_t)(c), (b))
#define CRC16(c, v) __builtin_aarch64_crc32ch((uint32_t)(c), (v))
#define CRC32W(c, v) __builtin_aarch64_crc32cw((uint32_t)(c), (v))
#define HW_TARGET __attribute__((target("+crc")))
HW_TARGET static uint32_t crc32c_hw_u32(uint32_t v) { return ~__builtin_aarch64_crc32cw(0xFFFFFFFFu, v); }
#endif

#ifdef TL_HAVE_HW
static inline uint64_t load64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t load32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t load16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* three chains over blocks of `block` bytes at p, p+block, p+2 block: 3 block bytes consumed */
#define TRIPLE(block, table)                                                             \
    while (len >= 3 * (block)) {                                                         \
        uint64_t c1 = 0, c2 = 0;                                                         \
        const unsigned char *end = p + (block);                                          \
        do {                                                                             \
            c = CRC64(c, load64(p));                                                     \
            c1 = CRC64(c1, load64(p + (block)));                                         \
            c2 = CRC64(c2, load64(p + 2 * (block)));                                     \
            p += 8;                                                                      \
        } while (p < end);                                                               \
        c = shift(table, (uint32_t)c) ^ (uint32_t)c1;                                    \
        c = shift(table, (uint32_t)c) ^ (uint32_t)c2;                                    \
        p += 2 * (block);                                                                \
        len -= 3 * (block);                                                              \
    }

/* the last len < 8 bytes: at most three instructions */
#define TAIL                                                                             \
    while (len >= 8) { c = CRC64(c, load64(p)); p += 8; len -= 8; }                      \
    if (len & 4) { c = CRC32W(c, load32(p)); p += 4; }                                   \
    if (len & 2) { c = CRC16(c, load16(p)); p += 2; }                                    \
    if (len & 1) c = CRC8(c, *p);

HW_TARGET static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = (const unsigned char *)buf;
    uint64_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) { c = CRC8(c, *p++); len--; }
    TRIPLE(LONG_BLOCK, shift_long)
    TRIPLE(SHORT_BLOCK, shift_short)
    TAIL
    return ~(uint32_t)c;
}
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* Records are mostly short (tens to hundreds of bytes), where one chain of crc32 instructions
 * waits 3 cycles per 8 bytes. Three chains over thirds of the input run in parallel; their CRCs
 * are combined with a carry-less multiply: advancing a register c over n zero bytes is
 * c * x^(8n) mod P, and crc32(0, clmul(c, K)) = c * K * x^33 mod P (one x from the bit-reflected
 * product, 32 from the instruction), so K = x^(8n - 33) mod P, one constant per block length. */
#include <immintrin.h>
#define MID_MIN 48                            /* below: one chain is as fast */
static uint32_t k_mid[2 * SHORT_BLOCK / 8 + 1];     /* k_mid[i]: K for n = 8 i bytes */

static void make_k_mid(void) {
    uint32_t v = 0x80000000u;                 /* the polynomial 1, bit-reflected */
    long power = 0;                           /* v = x^power mod P */
    for (int i = 1; i <= 2 * SHORT_BLOCK / 8; i++) {
        for (; power < 64L * i - 33; power++) v = (v & 1) ? (v >> 1) ^ POLY : v >> 1;
        k_mid[i] = v;
    }
}

__attribute__((target("sse4.2,pclmul")))
static inline uint32_t shift_clmul(uint64_t c, uint32_t k) {
    __m128i prod = _mm_clmulepi64_si128(_mm_cvtsi32_si128((int)(uint32_t)c),
                                        _mm_cvtsi32_si128((int)k), 0x00);
    return (uint32_t)_mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(prod));
}

#define MIXED_MIN 2048        /* from here folding and chains (clmul_long), below chains alone */
static int fold_wide = 0;     /* 1: the CPU has 256-bit VPCLMULQDQ (clmul_long) */
static uint32_t clmul_long(uint64_t c, const unsigned char *p, size_t len);

/* the finished CRC (inverted) of p[0..len) from register c; long: inputs of MIXED_MIN bytes and
 * more may go to clmul_long (a tail call, so that the short inputs' path saves no registers) */
__attribute__((always_inline, target("sse4.2,pclmul")))
static inline uint32_t clmul_body(uint64_t c, const unsigned char *p, size_t len, int long_ok) {
    while (len && ((uintptr_t)p & 7)) { c = CRC8(c, *p++); len--; }
    if (len >= 3 * SHORT_BLOCK) {
        if (long_ok && len >= MIXED_MIN && fold_wide) return clmul_long(c, p, len);
        TRIPLE(LONG_BLOCK, shift_long)
        TRIPLE(SHORT_BLOCK, shift_short)
    }
    if (len >= MID_MIN) {                     /* here len < 3 SHORT_BLOCK */
        size_t block = len / 24 * 8;
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *end = p + block;
        do {
            c = CRC64(c, load64(p));
            c1 = CRC64(c1, load64(p + block));
            c2 = CRC64(c2, load64(p + 2 * block));
            p += 8;
        } while (p < end);
        c = shift_clmul(c, k_mid[2 * block / 8]) ^ shift_clmul(c1, k_mid[block / 8]) ^ (uint32_t)c2;
        p += 2 * block;
        len -= 3 * block;
    }
    TAIL
    return ~(uint32_t)c;
}

/* Long inputs (MIXED_MIN and more) where the CPU has 256-bit VPCLMULQDQ: folding. A carry-less
 * multiply moves a 16-byte lane forward over any distance. The folding state is 128 bytes
 * (eight 16-byte lanes in four 256-bit registers); each step folds every lane over 128 bytes
 * and adds the next 16 bytes there. (128-bit PCLMULQDQ folding alone was measured slower than
 * the three crc32 chains on AMD Zen 3, so CPUs without the 256-bit form keep the chains.)
 * Bit-reflected algebra (a 64-bit word w is the polynomial sum w_i x^(63-i), a 16-byte lane is
 * lo x^64 + hi with lo its first 8 bytes): the multiply of words a and b gives a b x as a 128-bit
 * lane, so a lane moves forward over n bytes as clmul(lo, x^(64+8n-1)) ^ clmul(hi, x^(8n-1))
 * (constants mod P, 32-bit reflected values in the words' high halves). The CRC register so far
 * enters as the first 4 bytes XORed in; at the end the eight lanes are folded into one (16-byte
 * steps), and the crc32 instruction over that lane's 16 bytes from 0 turns it into the CRC
 * register (the instruction computes exactly lane * x^32 mod P). */
static uint64_t k_fold128[2], k_fold16[2];    /* {lo, hi} constants for 128 and 16 bytes */

static uint32_t xpow_mod(long n) {            /* x^n mod P, 32-bit reflected */
    uint32_t v = 0x80000000u;
    while (n-- > 0) v = (v & 1) ? (v >> 1) ^ POLY : v >> 1;
    return v;
}

static void make_k_fold(void) {
    k_fold128[0] = (uint64_t)xpow_mod(64 + 8 * 128 - 1) << 32;
    k_fold128[1] = (uint64_t)xpow_mod(8 * 128 - 1) << 32;
    k_fold16[0] = (uint64_t)xpow_mod(64 + 8 * 16 - 1) << 32;
    k_fold16[1] = (uint64_t)xpow_mod(8 * 16 - 1) << 32;
}

__attribute__((always_inline, target("sse4.2,pclmul")))
static inline __m128i fold16(__m128i s, __m128i k) {
    return _mm_xor_si128(_mm_clmulepi64_si128(s, k, 0x00), _mm_clmulepi64_si128(s, k, 0x11));
}

/* eight lanes (in message order) into the CRC register */
__attribute__((always_inline, target("sse4.2,pclmul")))
static inline uint64_t fold_finish(const __m128i *lane) {
    __m128i k = _mm_loadu_si128((const __m128i *)k_fold16);
    __m128i s = lane[0];
    for (int i = 1; i < 8; i++) s = _mm_xor_si128(fold16(s, k), lane[i]);
    return _mm_crc32_u64(_mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(s)),
                         (uint64_t)_mm_extract_epi64(s, 1));
}

#define WIDE_TARGET __attribute__((target("sse4.2,pclmul,avx2,vpclmulqdq")))
WIDE_TARGET static inline __m256i fold32(__m256i s, __m256i k) {
    return _mm256_xor_si256(_mm256_clmulepi64_epi128(s, k, 0x00),
                            _mm256_clmulepi64_epi128(s, k, 0x11));
}

/* Longer inputs where the CPU folds 256 bits at a time: the folding and three crc32 chains run
 * side by side (they use different execution units: measured on AMD Zen 3, either alone moves
 * ~4.7 bytes per TSC cycle, both together ~8). n steps take 128 n bytes for the folding, then
 * three runs of m = 32 n bytes for the chains (4 crc32 each per step); the four registers are
 * then joined by shifting over m bytes: shift_clmul with K = x^(8m - 33) mod P, made from
 * k_pow2[j] = x^(2^j - 33) mod P (shift_clmul(x^(a-33), x^(b-33)) = x^(a+b-33)). */
static uint32_t k_pow2[64];                   /* j >= 8 only (8m is a multiple of 256) */

__attribute__((target("sse4.2,pclmul")))
static void make_k_pow2(void) {
    k_pow2[8] = xpow_mod(256 - 33);
    for (int j = 9; j < 64; j++) k_pow2[j] = shift_clmul(k_pow2[j - 1], k_pow2[j - 1]);
}

__attribute__((target("sse4.2,pclmul")))
static uint32_t k_shift(uint64_t bits) {      /* x^(bits - 33) mod P; bits a multiple of 256 */
    int j = __builtin_ctzll(bits);
    uint32_t k = k_pow2[j];
    for (bits &= bits - 1; bits; bits &= bits - 1)
        k = shift_clmul(k, k_pow2[__builtin_ctzll(bits)]);
    return k;
}

WIDE_TARGET static uint64_t mixed_256(uint64_t c, const unsigned char **pp, size_t *plen) {
    const unsigned char *p = *pp;
    size_t n = *plen / 224, m = 32 * n;
    const unsigned char *b1 = p + 128 * n, *b2 = b1 + m, *b3 = b2 + m, *end = b2;
    uint32_t k = k_shift(8 * (uint64_t)m);
    uint64_t c1 = 0, c2 = 0, c3 = 0, ca;
    __m256i kf = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)k_fold128));
    __m256i x0 = _mm256_loadu_si256((const __m256i *)p);
    __m256i x1 = _mm256_loadu_si256((const __m256i *)(p + 32));
    __m256i x2 = _mm256_loadu_si256((const __m256i *)(p + 64));
    __m256i x3 = _mm256_loadu_si256((const __m256i *)(p + 96));
    __m128i lane[8];
    x0 = _mm256_xor_si256(x0, _mm256_inserti128_si256(_mm256_setzero_si256(),
                                                      _mm_cvtsi32_si128((int)(uint32_t)c), 0));
    p += 128;
#define CHAINS                                                                            \
    c1 = CRC64(c1, load64(b1)); c2 = CRC64(c2, load64(b2)); c3 = CRC64(c3, load64(b3));   \
    c1 = CRC64(c1, load64(b1 + 8)); c2 = CRC64(c2, load64(b2 + 8));                       \
    c3 = CRC64(c3, load64(b3 + 8));                                                       \
    c1 = CRC64(c1, load64(b1 + 16)); c2 = CRC64(c2, load64(b2 + 16));                     \
    c3 = CRC64(c3, load64(b3 + 16));                                                      \
    c1 = CRC64(c1, load64(b1 + 24)); c2 = CRC64(c2, load64(b2 + 24));                     \
    c3 = CRC64(c3, load64(b3 + 24));                                                      \
    b1 += 32; b2 += 32; b3 += 32;
    CHAINS
    while (b1 < end) {
        x0 = _mm256_xor_si256(fold32(x0, kf), _mm256_loadu_si256((const __m256i *)p));
        x1 = _mm256_xor_si256(fold32(x1, kf), _mm256_loadu_si256((const __m256i *)(p + 32)));
        x2 = _mm256_xor_si256(fold32(x2, kf), _mm256_loadu_si256((const __m256i *)(p + 64)));
        x3 = _mm256_xor_si256(fold32(x3, kf), _mm256_loadu_si256((const __m256i *)(p + 96)));
        p += 128;
        CHAINS
    }
#undef CHAINS
    lane[0] = _mm256_castsi256_si128(x0); lane[1] = _mm256_extracti128_si256(x0, 1);
    lane[2] = _mm256_castsi256_si128(x1); lane[3] = _mm256_extracti128_si256(x1, 1);
    lane[4] = _mm256_castsi256_si128(x2); lane[5] = _mm256_extracti128_si256(x2, 1);
    lane[6] = _mm256_castsi256_si128(x3); lane[7] = _mm256_extracti128_si256(x3, 1);
    ca = fold_finish(lane);
    c = shift_clmul(ca, k) ^ (uint32_t)c1;
    c = shift_clmul(c, k) ^ (uint32_t)c2;
    c = shift_clmul(c, k) ^ (uint32_t)c3;
    *pp = b3;
    *plen -= 224 * n;
    return c;
}

__attribute__((noinline, target("sse4.2,pclmul")))
static uint32_t clmul_long(uint64_t c, const unsigned char *p, size_t len) {
    c = mixed_256(c, &p, &len);
    return clmul_body(c, p, len, 0);
}

__attribute__((target("sse4.2,pclmul")))
static uint32_t crc32c_hw_clmul(uint32_t crc, const void *buf, size_t len) {
    return clmul_body(~crc, (const unsigned char *)buf, len, 1);
}

__attribute__((target("sse4.2,pclmul")))
static uint32_t crc32c_hw_clmul_frame(uint32_t length, const void *buf, size_t len) {
    return clmul_body(CRC32W(0xFFFFFFFFu, length), (const unsigned char *)buf, len, 1);
}
static int cpu_has_clmul(void) { __builtin_cpu_init(); return __builtin_cpu_supports("pclmul"); }
static int cpu_has_wide(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq");
}
#define TL_HAVE_CLMUL 1
#endif

/* 0 = not decided yet, 1 = hardware, 2 = table, 3 = hardware with carry-less multiply,
 * 4 = that with 256-bit VPCLMULQDQ folding of long inputs */
static int mode = 0;

static int decide(void) {
    int m = 2;
#ifdef TL_HAVE_HW
    if (cpu_has_hw()) {
        make_shift_table(shift_short, SHORT_BLOCK);
        make_shift_table(shift_long, LONG_BLOCK);
        m = 1;
#ifdef TL_HAVE_CLMUL
        if (cpu_has_clmul()) {
            make_k_mid();
            make_k_fold();
            make_k_pow2();
            /* (TIDELOG_CRC32C_NO_WIDE: tests run the other path on a CPU that has it) */
            fold_wide = getenv("TIDELOG_CRC32C_NO_WIDE") ? 0 : cpu_has_wide();
            m = fold_wide ? 4 : 3;
        }
#endif
    }
#endif
    __atomic_store_n(&mode, m, __ATOMIC_RELEASE);   /* after the shift tables */
    return m;
}

int tl_crc32c_hw(void) {
    int m = __atomic_load_n(&mode, __ATOMIC_ACQUIRE);
    if (!m) m = decide();
    return m == 1 || m >= 3;
}

int tl_crc32c_mode(void) {
    int m = __atomic_load_n(&mode, __ATOMIC_ACQUIRE);
    return m ? m : decide();
}

uint32_t tl_crc32c_u32(uint32_t v) {
    int m = __atomic_load_n(&mode, __ATOMIC_ACQUIRE);
    if (!m) m = decide();
#ifdef TL_HAVE_HW
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__)
    if (m == 1 || m >= 3) return crc32c_hw_u32(v);
#endif
#endif
    {
        unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                              (unsigned char)(v >> 24)};
        return tl_crc32c_sw(0, b, 4);
    }
}

uint32_t tl_crc32c(uint32_t crc, const void *buf, size_t len) {
    int m = __atomic_load_n(&mode, __ATOMIC_ACQUIRE);
    if (!m) m = decide();
#ifdef TL_HAVE_CLMUL
    if (m >= 3) return crc32c_hw_clmul(crc, buf, len);
#endif
#ifdef TL_HAVE_HW
    if (m == 1) return crc32c_hw(crc, buf, len);
#endif
    return tl_crc32c_sw(crc, buf, len);
}

uint32_t tl_crc32c_frame(uint32_t length, const void *buf, size_t len) {
#ifdef TL_HAVE_CLMUL
    if (__atomic_load_n(&mode, __ATOMIC_ACQUIRE) >= 3) return crc32c_hw_clmul_frame(length, buf, len);
#endif
    return tl_crc32c(tl_crc32c_u32(length), buf, len);
}
