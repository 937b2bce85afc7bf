/* CRC32C (Castagnoli) for tidelog: hardware instruction where the CPU has it, table otherwise. */
#ifndef TIDELOG_CRC32C_H
#define TIDELOG_CRC32C_H
#include <stddef.h>
#include <stdint.h>

/* Continue a CRC32C: pass 0 to start; the result of one call is the `crc` of the next. */
uint32_t tl_crc32c(uint32_t crc, const void *buf, size_t len);
/* The portable table version, always available (tests compare it with the hardware one). */
uint32_t tl_crc32c_sw(uint32_t crc, const void *buf, size_t len);
/* CRC32C of the 4 little-endian bytes of v (a frame's length word), from a fresh start. */
uint32_t tl_crc32c_u32(uint32_t v);
/* tl_crc32c(tl_crc32c_u32(length), buf, len) in one call: a frame's CRC (FORMAT.md §2). */
uint32_t tl_crc32c_frame(uint32_t length, const void *buf, size_t len);
/* 1 when tl_crc32c uses a CPU instruction. */
int tl_crc32c_hw(void);
/* The implementation in use: 1 crc32 instruction, 2 tables, 3 crc32 and carry-less multiply. */
int tl_crc32c_mode(void);

#endif
