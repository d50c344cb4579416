import Foundation
import SluiceKafka
import Testing

@Suite("The librdkafka the suite runs against")
struct LinkedLibrdkafkaTests {
    /// `make test` runs the suite a second time with librdkafka 2.16 swapped in at run time; this makes sure
    /// that run really loaded it rather than silently falling back to the system's library.
    @Test("is the one the run asked for (SLUICE_EXPECT_LIBRDKAFKA)")
    func expectedVersion() {
        #expect(
            Librdkafka.versionNumber >= 0x0200_0000, "Sluice needs librdkafka 2.0 or later, got \(Librdkafka.version)")
        if let expected = ProcessInfo.processInfo.environment["SLUICE_EXPECT_LIBRDKAFKA"] {
            #expect(Librdkafka.version == expected)
        }
    }
}
