/* The calling thread's role (thread_role.h). */
#include "thread_role.h"

static _Thread_local fkv_thread_role role = FKV_ROLE_CALLER;

void fkv_thread_role_set(fkv_thread_role r) { role = r; }

fkv_thread_role fkv_thread_role_get(void) { return role; }
