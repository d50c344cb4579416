#define _GNU_SOURCE
#include "CSluiceCrash.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

static _Thread_local const void *current_job;
static _Thread_local int sluice_thread;

/// The registered journals (NULL entries are free); written under `registration`, read by the handler.
static void *volatile journals[SLUICE_CRASH_MAX_JOURNALS];
static int registered;
static pthread_mutex_t registration = PTHREAD_MUTEX_INITIALIZER;
static const int fatal_signals[] = {SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGFPE, SIGABRT};
#define FATAL_COUNT (sizeof(fatal_signals) / sizeof(fatal_signals[0]))
static struct sigaction previous[FATAL_COUNT];

void sluice_crash_set_current_job(const void *job) { current_job = job; }

void sluice_crash_mark_sluice_thread(void) { sluice_thread = 1; }

int32_t sluice_crash_attribute(const void *base, int32_t *slot) {
    *slot = -1;
    if (base == NULL) return SLUICE_FAULT_UNKNOWN;
    const sluice_journal_header *header = base;
    const sluice_journal_slot *slots =
        (const sluice_journal_slot *)((const char *)base + SLUICE_JOURNAL_HEADER_SIZE);
    uint64_t job = (uint64_t)(uintptr_t)current_job;
    if (job != 0) {
        for (uint32_t index = 0; index < header->capacity; index++) {
            if (slots[index].task != job) continue;
            if (slots[index].in_handler) {
                *slot = (int32_t)index;
                return SLUICE_FAULT_HANDLER;
            }
            return SLUICE_FAULT_SLUICE;
        }
    }
    return sluice_thread ? SLUICE_FAULT_SLUICE : SLUICE_FAULT_UNKNOWN;
}

/// Records `signo` in the journal at `base`, with `fault` and `slot` as attributed.
static void record_attributed(void *base, int signo, int32_t fault, int32_t slot) {
    sluice_journal_header *header = base;
    if (header == NULL || header->signal != 0) return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    header->died_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    header->attributed_slot = slot;
    header->fault = fault;
    header->signal = signo;
}

void sluice_crash_record(void *base, int signo) {
    int32_t slot;
    int32_t fault = sluice_crash_attribute(base, &slot);
    record_attributed(base, signo, fault, slot);
}

/// Async-signal-safe only: plain loads and stores, clock_gettime, sigaction, raise.
static void on_fatal_signal(int signo, siginfo_t *info, void *context) {
    (void)context;
    // A handler call of one journal's host: the other hosts of the process blame nothing of theirs.
    int blamed = 0;
    for (int index = 0; index < SLUICE_CRASH_MAX_JOURNALS; index++) {
        int32_t slot;
        if (journals[index] != NULL && sluice_crash_attribute(journals[index], &slot) == SLUICE_FAULT_HANDLER) blamed = 1;
    }
    for (int index = 0; index < SLUICE_CRASH_MAX_JOURNALS; index++) {
        void *base = journals[index];
        if (base == NULL) continue;
        int32_t slot;
        int32_t fault = sluice_crash_attribute(base, &slot);
        if (blamed && fault != SLUICE_FAULT_HANDLER) fault = SLUICE_FAULT_SLUICE;
        record_attributed(base, signo, fault, slot);
    }
    for (unsigned index = 0; index < FATAL_COUNT; index++) {
        if (fatal_signals[index] == signo) sigaction(signo, &previous[index], NULL);
    }
    // A fault raised by the CPU happens again when the handler returns, now under the earlier action (the
    // backtracer sees the original context). A signal sent by a call (abort, raise, kill) is sent again.
    if (info == NULL || info->si_code <= 0 || signo == SIGABRT) raise(signo);
}

static int install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_fatal_signal;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    for (unsigned index = 0; index < FATAL_COUNT; index++) {
        if (sigaction(fatal_signals[index], &action, &previous[index]) != 0) {
            int error = errno;
            for (unsigned undo = 0; undo < index; undo++) sigaction(fatal_signals[undo], &previous[undo], NULL);
            return error;
        }
    }
    return 0;
}

int sluice_crash_register(void *base) {
    pthread_mutex_lock(&registration);
    int error = 0;
    int free_index = -1;
    for (int index = 0; index < SLUICE_CRASH_MAX_JOURNALS; index++) {
        if (journals[index] == base) goto done;
        if (journals[index] == NULL && free_index < 0) free_index = index;
    }
    if (free_index < 0) {
        error = ENOSPC;
        goto done;
    }
    if (registered == 0 && (error = install()) != 0) goto done;
    journals[free_index] = base;
    registered++;
done:
    pthread_mutex_unlock(&registration);
    return error;
}

void sluice_crash_unregister(void *base) {
    pthread_mutex_lock(&registration);
    for (int index = 0; index < SLUICE_CRASH_MAX_JOURNALS; index++) {
        if (journals[index] != base) continue;
        journals[index] = NULL;
        registered--;
        if (registered == 0) {
            for (unsigned signal = 0; signal < FATAL_COUNT; signal++) sigaction(fatal_signals[signal], &previous[signal], NULL);
        }
        break;
    }
    pthread_mutex_unlock(&registration);
}

_Static_assert(sizeof(sluice_journal_header) <= SLUICE_JOURNAL_HEADER_SIZE, "the header fits its page");
_Static_assert(sizeof(sluice_journal_slot) == 392, "a slot is 392 bytes (the file layout)");
