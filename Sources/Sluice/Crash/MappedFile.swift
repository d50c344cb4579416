#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A state file mapped shared into memory (the crash journal, the progress file): what the process writes there is
/// in the page cache when it dies, however it dies.
enum MappedFile {
    /// Empties the open file `descriptor` and maps `size` zeroed bytes of it. Its blocks are allocated first, so a
    /// full disk fails here, at start, and not as a SIGBUS on a later write. `failure` names what went wrong.
    static func mapEmpty(
        _ descriptor: Int32, size: Int, path: String, failure: (String) -> SluiceError
    ) throws(SluiceError) -> UnsafeMutableRawPointer {
        guard ftruncate(descriptor, 0) == 0, ftruncate(descriptor, off_t(size)) == 0 else {
            throw failure("sizing \(path)")
        }
        let allocated = posix_fallocate(descriptor, 0, off_t(size))
        guard allocated == 0 || allocated == EOPNOTSUPP || allocated == EINVAL else {
            errno = allocated
            throw failure("allocating \(size) bytes for \(path)")
        }
        guard let mapped = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0), mapped != MAP_FAILED
        else {
            throw failure("mapping \(path)")
        }
        return mapped
    }
}
