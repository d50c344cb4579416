#ifndef SLUICE_CCALLGRIND_H
#define SLUICE_CCALLGRIND_H

/// Valgrind client requests for `sluice bench --instructions`: whether this process runs under valgrind, and
/// callgrind's instrumentation switched on and off around what a case measures. Each is one no-op instruction
/// sequence outside valgrind (and does nothing on architectures other than x86_64).

/// The number of valgrinds this process runs under (0: none).
unsigned long sluice_valgrind_running(void);

/// Callgrind counts from here (the process runs with `--instr-atstart=no`).
void sluice_callgrind_start_instrumentation(void);

/// Callgrind stops counting here.
void sluice_callgrind_stop_instrumentation(void);

#endif
