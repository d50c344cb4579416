#include "CCallgrind.h"

// Valgrind's client-request mechanism (valgrind.h, "client requests"): a request is an array of six words
// whose address is in rax when the CPU meets a preamble of four rotations of rdi (a no-op on real hardware:
// 3 + 13 + 61 + 51 = 128 bits) followed by `xchg rbx, rbx`; valgrind recognizes the sequence and puts its
// answer in rdx, which otherwise keeps the default. Written out here so that building Sluice does not need
// valgrind's headers.
#define SLUICE_VG_RUNNING_ON_VALGRIND 0x1001UL
// VG_USERREQ_TOOL_BASE('C','T') = ('C' << 24 | 'T' << 16), then DUMP_STATS, ZERO_STATS, TOGGLE_COLLECT,
// DUMP_STATS_AT, START_INSTRUMENTATION, STOP_INSTRUMENTATION.
#define SLUICE_CALLGRIND_BASE (((unsigned long)'C' << 24) | ((unsigned long)'T' << 16))
#define SLUICE_CALLGRIND_START_INSTRUMENTATION (SLUICE_CALLGRIND_BASE + 4)
#define SLUICE_CALLGRIND_STOP_INSTRUMENTATION (SLUICE_CALLGRIND_BASE + 5)

static unsigned long sluice_client_request(unsigned long request, unsigned long fallback) {
#if defined(__x86_64__) && defined(__linux__)
    volatile unsigned long arguments[6] = {request, 0, 0, 0, 0, 0};
    volatile unsigned long result;
    __asm__ volatile("rolq $3,  %%rdi ; rolq $13, %%rdi\n\t"
                     "rolq $61, %%rdi ; rolq $51, %%rdi\n\t"
                     "xchgq %%rbx,%%rbx"
                     : "=d"(result)
                     : "a"(&arguments[0]), "0"(fallback)
                     : "cc", "memory");
    return result;
#else
    (void)request;
    return fallback;
#endif
}

unsigned long sluice_valgrind_running(void) { return sluice_client_request(SLUICE_VG_RUNNING_ON_VALGRIND, 0); }

void sluice_callgrind_start_instrumentation(void) {
    (void)sluice_client_request(SLUICE_CALLGRIND_START_INSTRUMENTATION, 0);
}

void sluice_callgrind_stop_instrumentation(void) {
    (void)sluice_client_request(SLUICE_CALLGRIND_STOP_INSTRUMENTATION, 0);
}
