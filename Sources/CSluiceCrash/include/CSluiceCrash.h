#ifndef SLUICE_CRASH_H
#define SLUICE_CRASH_H

#include <stdint.h>

/// The crash journal's layout (docs/architecture.md §12): a header page, then one slot per processing lane. The file
/// is memory-mapped shared, so what the process wrote is in the page cache when it dies, however it dies.
/// Little-endian, fixed sizes; `version` changes with any layout change.

#define SLUICE_JOURNAL_MAGIC 0x314C4E524A43554CULL /* "LUCJRNL1" */
#define SLUICE_JOURNAL_VERSION 1
#define SLUICE_JOURNAL_HEADER_SIZE 4096
#define SLUICE_JOURNAL_TOPIC_CAPACITY 256

/// The process is running (or died without saying otherwise).
#define SLUICE_JOURNAL_RUNNING 1
/// The process stopped cleanly: nothing to look at.
#define SLUICE_JOURNAL_CLOSED 2
/// A later start read what it held.
#define SLUICE_JOURNAL_READ 3

/// No fatal signal.
#define SLUICE_FAULT_NONE 0
/// The faulting thread ran a lane inside its handler call: the lane's message is the culprit.
#define SLUICE_FAULT_HANDLER 1
/// The faulting thread ran Sluice's own code (a lane outside its handler call, or a thread Sluice owns).
#define SLUICE_FAULT_SLUICE 2
/// The faulting thread is not one Sluice can tell (a task a handler started, a thread of its own).
#define SLUICE_FAULT_UNKNOWN 3

typedef struct {
    uint64_t magic;
    uint32_t version;
    /// Lane slots after the header.
    uint32_t capacity;
    int64_t pid;
    int64_t started_ms;
    volatile int32_t state;
    /// The fatal signal the process died of, 0 if none was caught.
    volatile int32_t signal;
    /// SLUICE_FAULT_*.
    volatile int32_t fault;
    /// The slot attributed under SLUICE_FAULT_HANDLER, else -1.
    volatile int32_t attributed_slot;
    volatile int64_t died_ms;
} sluice_journal_header;

typedef struct {
    /// The lane's task while the slot is held, 0 when free.
    volatile uint64_t task;
    /// The first offset of the call in progress.
    volatile int64_t offset;
    /// Messages in the call (1, or a batch).
    volatile int32_t count;
    /// 1 while the lane is inside a handler call.
    volatile int32_t in_handler;
    int32_t partition;
    int32_t topic_length;
    uint64_t generation;
    char topic[SLUICE_JOURNAL_TOPIC_CAPACITY];
    /// 1 while the call is a suspect's, run alone to find the culprit of an unattributed death.
    volatile int32_t careful;
    /// 1 when `timestamp_ms` holds the call's first message's timestamp (0 in journals written before it).
    volatile int32_t has_timestamp;
    /// The call's first message's timestamp (ms since the epoch): with the offset, it tells the message from
    /// another at the same offset of a deleted and recreated topic.
    volatile int64_t timestamp_ms;
    uint8_t reserved[8];
} sluice_journal_slot;

_Static_assert(sizeof(sluice_journal_slot) == 320, "the journal slot layout is version 1's");

/// Sets the job the calling thread runs (Sluice's executors call it around each job); NULL when none.
void sluice_crash_set_current_job(const void *job);

/// Marks the calling thread as Sluice's own: a fault on it is never blamed on a message.
void sluice_crash_mark_sluice_thread(void);

/// How many journals a process can register at once (one per host in it; tests run several hosts).
#define SLUICE_CRASH_MAX_JOURNALS 64

/// Registers the journal mapped at `base` with the process's fatal-signal handlers (SIGILL, SIGTRAP, SIGSEGV,
/// SIGBUS, SIGFPE, SIGABRT), installing them with the first registration. On a fatal signal they record the
/// signal and what ran on the faulting thread in every registered journal (a fault in one journal's handler
/// call blames nothing in the others), restore the action that was installed before (the runtime's
/// backtracer, or the default) and let the signal take its course. The signal disposition is the one
/// thing a process has only once; the journals stay owned by their hosts.
/// Returns 0, ENOSPC when SLUICE_CRASH_MAX_JOURNALS are registered, or the errno of a failed sigaction.
int sluice_crash_register(void *base);

/// Forgets the journal at `base`; the last one restores the earlier actions.
void sluice_crash_unregister(void *base);

/// Records a fatal signal in the journal at `base` as the handler does, for the calling thread (no raise).
void sluice_crash_record(void *base, int signo);

/// What the handler would record for a fault on the calling thread now: SLUICE_FAULT_* and the slot.
int32_t sluice_crash_attribute(const void *base, int32_t *slot);

/// Lane hooks, a few stores each and no system call.
static inline void sluice_journal_begin(
    sluice_journal_slot *slot, int64_t offset, int32_t count, int32_t careful, int32_t has_timestamp, int64_t timestamp_ms) {
    slot->offset = offset;
    slot->count = count;
    slot->careful = careful;
    slot->has_timestamp = has_timestamp;
    slot->timestamp_ms = timestamp_ms;
    slot->in_handler = 1;
}

static inline void sluice_journal_end(sluice_journal_slot *slot) { slot->in_handler = 0; }

#endif
