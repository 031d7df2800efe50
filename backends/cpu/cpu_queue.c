/* In-order queues as worker threads, and refcounted completion events (see cpu_queue.h). */
#include "cpu_queue.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/error.h"

#define CPU_MSG_SIZE 512

struct fkv_bevent {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs; /* the caller's (if any) + the command's */
    int done;
    fkv_status status;
    char msg[CPU_MSG_SIZE]; /* why it failed (without the status prefix) */
};

typedef struct cpu_cmd {
    struct cpu_cmd *next;
    cpu_cmd_fn fn; /* NULL: a marker */
    void *args;
    fkv_bevent *event;
    int device_error; /* a failure of fn acts as a device error (cpu_queue_submit_device_error) */
    uint32_t n_wait;
    fkv_bevent *wait[]; /* retained references, released after the command ran */
} cpu_cmd;

struct cpu_queue {
    pthread_mutex_t lock; /* guards head, tail, stopping */
    pthread_cond_t cond;  /* signalled on a new command or on stopping */
    cpu_cmd *head, *tail;
    int stopping;
    pthread_t thread;
    char name[32];
    /* Worker-thread only: the first failure since the last marker, so that marker and
     * finish report failures of commands whose events nobody waits on. */
    fkv_status pending_status;
    char pending_msg[CPU_MSG_SIZE];
    /* Worker-thread only: after a device error, commands fail without running until a
     * marker has reported it. */
    int poisoned;
};

/* ---- events ---- */

static fkv_status event_create(int refs, fkv_bevent **out) {
    fkv_bevent *ev = calloc(1, sizeof *ev);
    if (ev == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "cpu: allocating an event");
    if (pthread_mutex_init(&ev->lock, NULL) != 0) {
        free(ev);
        return fkv_error(FKV_ERR_BACKEND, "cpu: pthread_mutex_init failed for an event");
    }
    if (pthread_cond_init(&ev->cond, NULL) != 0) {
        pthread_mutex_destroy(&ev->lock);
        free(ev);
        return fkv_error(FKV_ERR_BACKEND, "cpu: pthread_cond_init failed for an event");
    }
    ev->refs = refs;
    ev->status = FKV_OK;
    *out = ev;
    return FKV_OK;
}

static void event_retain(fkv_bevent *ev) {
    pthread_mutex_lock(&ev->lock);
    ev->refs++;
    pthread_mutex_unlock(&ev->lock);
}

void cpu_event_release(fkv_bevent *ev) {
    if (ev == NULL)
        return;
    pthread_mutex_lock(&ev->lock);
    int last = --ev->refs == 0;
    pthread_mutex_unlock(&ev->lock);
    if (last) {
        pthread_cond_destroy(&ev->cond);
        pthread_mutex_destroy(&ev->lock);
        free(ev);
    }
}

static void event_complete(fkv_bevent *ev, fkv_status status, const char *msg) {
    pthread_mutex_lock(&ev->lock);
    ev->status = status;
    if (status != FKV_OK)
        snprintf(ev->msg, sizeof ev->msg, "%s", msg ? msg : "");
    ev->done = 1;
    pthread_cond_broadcast(&ev->cond);
    pthread_mutex_unlock(&ev->lock);
}

/* Blocks until ev completed; copies its failure message into msg (when failed). */
static fkv_status event_block(fkv_bevent *ev, char *msg, size_t msg_size) {
    pthread_mutex_lock(&ev->lock);
    while (!ev->done)
        pthread_cond_wait(&ev->cond, &ev->lock);
    fkv_status st = ev->status;
    if (st != FKV_OK && msg)
        snprintf(msg, msg_size, "%s", ev->msg);
    pthread_mutex_unlock(&ev->lock);
    return st;
}

int cpu_event_done(fkv_bevent *ev) {
    pthread_mutex_lock(&ev->lock);
    int done = ev->done;
    pthread_mutex_unlock(&ev->lock);
    return done;
}

fkv_status cpu_event_wait(uint32_t n, fkv_bevent *const *events) {
    /* Wait for all of them even after a failure, so that on return no command is left
     * running that the caller may think finished. */
    fkv_status first = FKV_OK;
    char msg[CPU_MSG_SIZE] = "";
    for (uint32_t i = 0; i < n; i++) {
        char m[CPU_MSG_SIZE];
        fkv_status st = event_block(events[i], m, sizeof m);
        if (st != FKV_OK && first == FKV_OK) {
            first = st;
            memcpy(msg, m, sizeof msg);
        }
    }
    if (first != FKV_OK)
        return fkv_error(first, "%s", msg);
    return FKV_OK;
}

/* ---- the worker ---- */

/* The last error message of this thread without its "<status string>: " prefix, which
 * fkv_error adds again when the failure is reported to the waiting thread. */
static const char *bare_last_error(fkv_status st) {
    const char *m = fkv_last_error();
    const char *prefix = fkv_status_string(st);
    size_t len = strlen(prefix);
    if (strncmp(m, prefix, len) == 0 && m[len] == ':' && m[len + 1] == ' ')
        return m + len + 2;
    return m[0] ? m : "command failed without a message";
}

static void run_command(cpu_queue *q, cpu_cmd *cmd) {
    fkv_status st = FKV_OK;
    char msg[CPU_MSG_SIZE] = "";
    for (uint32_t i = 0; i < cmd->n_wait; i++) {
        char m[CPU_MSG_SIZE];
        fkv_status w = event_block(cmd->wait[i], m, sizeof m);
        if (w != FKV_OK && st == FKV_OK) {
            st = w;
            snprintf(msg, sizeof msg, "waits on a failed command (%.*s)", CPU_MSG_SIZE - 40, m);
        }
    }
    if (st == FKV_OK && cmd->fn && q->poisoned) {
        st = q->pending_status;
        snprintf(msg, sizeof msg, "not run after a device error on the %s queue (%.*s)", q->name,
                 CPU_MSG_SIZE - 80, q->pending_msg);
    } else if (st == FKV_OK && cmd->fn) {
        fkv_error_clear();
        st = cmd->fn(cmd->args);
        if (st != FKV_OK)
            snprintf(msg, sizeof msg, "%s", bare_last_error(st));
        q->poisoned = st != FKV_OK && cmd->device_error;
    }
    if (cmd->fn == NULL && st == FKV_OK && q->pending_status != FKV_OK) {
        st = q->pending_status;
        snprintf(msg, sizeof msg, "an earlier command on the %s queue failed (%.*s)", q->name,
                 CPU_MSG_SIZE - 80, q->pending_msg);
    }
    if (cmd->fn == NULL) {
        q->pending_status = FKV_OK; /* reported (or nothing to report) */
        q->poisoned = 0;
    } else if (st != FKV_OK && q->pending_status == FKV_OK) {
        q->pending_status = st;
        memcpy(q->pending_msg, msg, sizeof q->pending_msg);
    }
    free(cmd->args);
    event_complete(cmd->event, st, msg);
    for (uint32_t i = 0; i < cmd->n_wait; i++)
        cpu_event_release(cmd->wait[i]);
    cpu_event_release(cmd->event);
    free(cmd);
}

static void *worker_main(void *arg) {
    cpu_queue *q = arg;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (q->head == NULL && !q->stopping)
            pthread_cond_wait(&q->cond, &q->lock);
        if (q->head == NULL)
            break; /* stopping and drained */
        cpu_cmd *cmd = q->head;
        q->head = cmd->next;
        if (q->head == NULL)
            q->tail = NULL;
        pthread_mutex_unlock(&q->lock);
        run_command(q, cmd);
        pthread_mutex_lock(&q->lock);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

/* ---- queues ---- */

fkv_status cpu_queue_create(const char *name, cpu_queue **out) {
    *out = NULL;
    cpu_queue *q = calloc(1, sizeof *q);
    if (q == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "cpu: allocating the %s queue", name);
    snprintf(q->name, sizeof q->name, "%s", name);
    if (pthread_mutex_init(&q->lock, NULL) != 0) {
        free(q);
        return fkv_error(FKV_ERR_BACKEND, "cpu: pthread_mutex_init failed for the %s queue",
                         name);
    }
    if (pthread_cond_init(&q->cond, NULL) != 0) {
        pthread_mutex_destroy(&q->lock);
        free(q);
        return fkv_error(FKV_ERR_BACKEND, "cpu: pthread_cond_init failed for the %s queue",
                         name);
    }
    int rc = pthread_create(&q->thread, NULL, worker_main, q);
    if (rc != 0) {
        pthread_cond_destroy(&q->cond);
        pthread_mutex_destroy(&q->lock);
        free(q);
        return fkv_error(FKV_ERR_BACKEND, "cpu: cannot start the %s queue thread (%s)", name,
                         strerror(rc));
    }
    *out = q;
    return FKV_OK;
}

void cpu_queue_destroy(cpu_queue *q) {
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->lock);
    q->stopping = 1;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    pthread_join(q->thread, NULL);
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->lock);
    free(q);
}

static fkv_status submit(cpu_queue *q, cpu_cmd_fn fn, void *args, uint32_t n_wait,
                        fkv_bevent *const *wait, fkv_bevent **done, int device_error) {
    fkv_status st = FKV_OK;
    fkv_bevent *ev = NULL;
    uint32_t n_events = 0; /* the wait list without its NULL entries */
    for (uint32_t i = 0; i < n_wait; i++)
        n_events += wait[i] != NULL;
    cpu_cmd *cmd = calloc(1, sizeof *cmd + (size_t)n_events * sizeof cmd->wait[0]);
    if (cmd == NULL) {
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "cpu: allocating a command");
        goto fail;
    }
    if ((st = event_create(done ? 2 : 1, &ev)) != FKV_OK)
        goto fail;
    cmd->fn = fn;
    cmd->args = args;
    cmd->event = ev;
    cmd->device_error = device_error;
    for (uint32_t i = 0; i < n_wait; i++) {
        if (wait[i] == NULL)
            continue;
        event_retain(wait[i]);
        cmd->wait[cmd->n_wait++] = wait[i];
    }
    pthread_mutex_lock(&q->lock);
    if (q->stopping) {
        pthread_mutex_unlock(&q->lock);
        for (uint32_t i = 0; i < cmd->n_wait; i++)
            cpu_event_release(cmd->wait[i]);
        st = fkv_error(FKV_ERR_BAD_STATE, "cpu: the %s queue is shutting down", q->name);
        goto fail;
    }
    if (q->tail)
        q->tail->next = cmd;
    else
        q->head = cmd;
    q->tail = cmd;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    if (done)
        *done = ev;
    return FKV_OK;
fail:
    if (ev) {
        pthread_cond_destroy(&ev->cond);
        pthread_mutex_destroy(&ev->lock);
        free(ev);
    }
    free(cmd);
    free(args);
    if (done)
        *done = NULL;
    return st;
}

fkv_status cpu_queue_submit(cpu_queue *q, cpu_cmd_fn fn, void *args, uint32_t n_wait,
                            fkv_bevent *const *wait, fkv_bevent **done) {
    return submit(q, fn, args, n_wait, wait, done, 0);
}

fkv_status cpu_queue_submit_device_error(cpu_queue *q, cpu_cmd_fn fn, void *args, uint32_t n_wait,
                                         fkv_bevent *const *wait, fkv_bevent **done) {
    return submit(q, fn, args, n_wait, wait, done, 1);
}
