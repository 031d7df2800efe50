/* Which of the library's threads the calling thread is, for the command counters: a blocking
 * host wait counts as the caller's or as the worker's (backends/counters.h). Thread-local:
 * every thread starts as FKV_ROLE_CALLER; core/speculative.c marks its worker thread. */
#ifndef FKV_COMMON_THREAD_ROLE_H
#define FKV_COMMON_THREAD_ROLE_H

typedef enum fkv_thread_role {
    FKV_ROLE_CALLER = 0, /* the application's threads (inside fkv_* calls) */
    FKV_ROLE_WORKER = 1  /* the speculative worker a context starts */
} fkv_thread_role;

void fkv_thread_role_set(fkv_thread_role role);
fkv_thread_role fkv_thread_role_get(void);

#endif
