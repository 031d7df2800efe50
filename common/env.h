/* Reading the library's environment variables: one rule for every backend. */
#ifndef FKV_COMMON_ENV_H
#define FKV_COMMON_ENV_H

#include "freekv.h"

/* *out = the index of $var among names[0..n) (case-insensitive), or dflt when the variable is
 * unset or empty. Any other value is FKV_ERR_BAD_ENVIRONMENT, the message listing the valid
 * values. */
fkv_status fkv_env_choice(const char *var, const char *const *names, int n, int dflt, int *out);

#endif
