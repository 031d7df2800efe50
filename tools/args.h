/* Strict command-line numbers for the freekv tools (freekv eval, freekv-opbench; freekv bench
 * can share them). A value is accepted only when the whole string is a number of the asked
 * kind inside [min, max]: integers are plain decimal digits (no sign, space, exponent, hex or
 * suffix), so "-1", "abc", "1e3", "4x", "" and anything past the range (overflow included) are
 * refused. On refusal the function prints "<tool>: <flag>: '<value>' ..." to stderr, saying
 * what was expected, and returns -1 (the tools then exit with status 2); *out is unchanged. */
#ifndef FKV_TOOLS_ARGS_H
#define FKV_TOOLS_ARGS_H

#include <stddef.h>
#include <stdint.h>

int fkv_arg_u64(const char *tool, const char *flag, const char *s, uint64_t min, uint64_t max,
                uint64_t *out);
int fkv_arg_u32(const char *tool, const char *flag, const char *s, uint32_t min, uint32_t max,
                uint32_t *out);
/* A finite decimal or exponent number ("0.5", "1e3"); NaN and infinity are refused. */
int fkv_arg_double(const char *tool, const char *flag, const char *s, double min, double max,
                   double *out);
/* A comma list of 1..cap integers in [min, max] ("32,64"); no empty items. *n gets the count.
 * On refusal out[] may be partly written (*n is unchanged). */
int fkv_arg_u32_list(const char *tool, const char *flag, const char *s, uint32_t min,
                     uint32_t max, uint32_t *out, size_t cap, size_t *n);

#endif
