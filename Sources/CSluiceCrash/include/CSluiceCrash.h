#ifndef SLUICE_CRASH_H
#define SLUICE_CRASH_H

#include <stdint.h>

/// The crash journal's layout (docs/architecture.md §12): a header page, then one slot per processing lane. The file
/// is memory-mapped shared, so what the process wrote is in the page cache when it dies, however it dies.
/// Little-endian, fixed sizes; `version` changes with any layout change.

#define SLUICE_JOURNAL_MAGIC 0x314C4E524A43554CULL /* "LUCJRNL1" */
#define SLUICE_JOURNAL_VERSION 2
/// Version 1's slots (320 bytes, no completions) are still read.
#define SLUICE_JOURNAL_VERSION_1_SLOT_SIZE 320
/// Offsets a lane's slot can mark completed above its first unhanded-over one.
#define SLUICE_JOURNAL_COMPLETED_WINDOW 512
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
    /// Version 2: the offsets the lane completed and has not handed over to its pipeline's watermark yet (at
    /// most 64): bit (offset - completed_base) of `completed`; completed_base -1 when none.
    volatile int64_t completed_base;
    volatile uint64_t completed[SLUICE_JOURNAL_COMPLETED_WINDOW / 64];
} sluice_journal_slot;

_Static_assert(sizeof(sluice_journal_slot) == 392, "the journal slot layout is version 2's");

/// Sets the job the calling thread runs (Sluice's executors call it around each job); NULL when none.
void sluice_crash_set_current_job(const void *job);

/// Marks the calling thread as Sluice's own: a fault on it is never blamed on a message.
void sluice_crash_mark_sluice_thread(void);

/// How many journals a process can register at once: one per host in it. A service runs one host; a test run starts
/// hundreds in one process, and at 64 the 65th host's start failed while the other tests held theirs. The fatal-signal
/// handler scans the table (4096 pointers, 32 KB) only when the process is dying.
#define SLUICE_CRASH_MAX_JOURNALS 4096

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

/// Records that the lane completed `offset`. Returns 0, or 1 when it is outside the slot's window (the lane then
/// hands its completions over, which clears the slot).
static inline int32_t sluice_journal_completed(sluice_journal_slot *slot, int64_t offset) {
    if (slot->completed_base < 0) slot->completed_base = offset;
    int64_t distance = offset - slot->completed_base;
    if (distance < 0 || distance >= SLUICE_JOURNAL_COMPLETED_WINDOW) return 1;
    slot->completed[distance >> 6] |= (uint64_t)1 << (distance & 63);
    return 0;
}

/// The lane handed its completions over: none is pending.
static inline void sluice_journal_clear_completed(sluice_journal_slot *slot) {
    slot->completed_base = -1;
    for (int index = 0; index < SLUICE_JOURNAL_COMPLETED_WINDOW / 64; index++) slot->completed[index] = 0;
}

/// The progress file beside each crash journal (`progress-N.bin` beside `crash-journal-N.bin`): per partition the
/// process owns, the watermark its pipelines reached (every offset below it done) and which offsets above it are
/// done too (with ordering by key, other keys run ahead of a slow one), written as each lane hands its
/// completions over. The successor of a process that died reads it and starts each partition there, so a death
/// redoes only the work of its last moments, not everything since the last commit.

#define SLUICE_PROGRESS_MAGIC 0x315347525043554CULL /* "LUCPRGS1" */
#define SLUICE_PROGRESS_VERSION 1
#define SLUICE_PROGRESS_HEADER_SIZE 2048
#define SLUICE_PROGRESS_TOPIC_CAPACITY 256
/// Offsets above the watermark an entry can mark done: bit (offset mod this) of `done`.
#define SLUICE_PROGRESS_WINDOW 14080

#define SLUICE_PROGRESS_OWNER_CAPACITY 256

typedef struct {
    uint64_t magic;
    uint32_t version;
    /// Entries after the header.
    uint32_t capacity;
    int64_t pid;
    /// The Kafka cluster id and consumer group the progress is of, once the process knows them (lengths 0
    /// before: such a file is not used). The bytes are written before the lengths.
    volatile uint16_t cluster_length;
    volatile uint16_t group_length;
    uint32_t reserved;
    char cluster[SLUICE_PROGRESS_OWNER_CAPACITY];
    char group[SLUICE_PROGRESS_OWNER_CAPACITY];
} sluice_progress_header;

_Static_assert(sizeof(sluice_progress_header) <= SLUICE_PROGRESS_HEADER_SIZE, "the progress header fits its page");

typedef struct {
    /// Odd while the entry is written (a death then leaves it odd: it is not read); even otherwise.
    volatile uint64_t sequence;
    /// Every offset below it is done (the next offset to consume).
    int64_t watermark;
    int32_t partition;
    uint16_t topic_length;
    uint16_t reserved16;
    /// 1 while the entry holds a partition's progress, 0 when free.
    int32_t used;
    int32_t reserved;
    char topic[SLUICE_PROGRESS_TOPIC_CAPACITY];
    /// Offsets in [watermark, watermark + SLUICE_PROGRESS_WINDOW) that are done: bit (offset mod window).
    uint8_t done[SLUICE_PROGRESS_WINDOW / 8];
} sluice_progress_entry;

_Static_assert(sizeof(sluice_progress_entry) == 2048, "the progress entry layout is version 1's");

/// Marks an entry as being written (odd sequence); `sluice_progress_end_write` marks it whole again. A process
/// dying in between leaves it odd, and it is not read.
static inline void sluice_progress_begin_write(sluice_progress_entry *entry) {
    __atomic_store_n(&entry->sequence, (entry->sequence & ~(uint64_t)1) + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static inline void sluice_progress_end_write(sluice_progress_entry *entry) {
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&entry->sequence, entry->sequence + 1, __ATOMIC_RELAXED);
}

/// Takes an entry for a partition (nothing done yet) or, with `used` 0, frees it. One writer per entry at a time.
static inline void sluice_progress_claim(
    sluice_progress_entry *entry, int32_t used, int32_t partition, int64_t watermark, const void *topic,
    uint16_t topic_length) {
    sluice_progress_begin_write(entry);
    if (topic_length > SLUICE_PROGRESS_TOPIC_CAPACITY) used = 0;
    entry->used = used;
    entry->partition = partition;
    entry->watermark = watermark;
    entry->topic_length = used ? topic_length : 0;
    if (used && topic_length > 0) __builtin_memcpy(entry->topic, topic, topic_length);
    __builtin_memset(entry->done, 0, sizeof(entry->done));
    sluice_progress_end_write(entry);
}

/// Records that every offset below `watermark` is done, and the `count` offsets in `done` (those within the window
/// above the watermark are kept). The watermark never moves back: every offset below either one is done.
static inline void sluice_progress_advance(
    sluice_progress_entry *entry, int64_t watermark, const int64_t *done, int32_t count) {
    sluice_progress_begin_write(entry);
    int64_t old = entry->watermark;
    if (watermark > old) {
        // The bits of the offsets the watermark passed now stand for offsets a window further.
        if (watermark - old >= SLUICE_PROGRESS_WINDOW) {
            __builtin_memset(entry->done, 0, sizeof(entry->done));
        } else {
            for (int64_t offset = old; offset < watermark; offset++) {
                int64_t bit = offset % SLUICE_PROGRESS_WINDOW;
                entry->done[bit >> 3] &= (uint8_t)~(1u << (bit & 7));
            }
        }
        entry->watermark = watermark;
    } else {
        watermark = old;
    }
    for (int32_t index = 0; index < count; index++) {
        int64_t offset = done[index];
        if (offset < watermark || offset - watermark >= SLUICE_PROGRESS_WINDOW) continue;
        int64_t bit = offset % SLUICE_PROGRESS_WINDOW;
        entry->done[bit >> 3] |= (uint8_t)(1u << (bit & 7));
    }
    sluice_progress_end_write(entry);
}

#endif
