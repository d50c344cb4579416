import ArgumentParser
import Foundation

/// How a command reaches the brokers beyond `--bootstrap`: librdkafka properties for TLS, SASL and the like,
/// from a properties file (secrets stay off the command line) and `--property` over it. Every command that
/// talks to Kafka takes them, so a secured cluster is reached the same way by each.
struct KafkaConnectionOptions: ParsableArguments {
    @Option(
        name: .customLong("property"),
        help:
            "A librdkafka property, NAME=VALUE (repeatable; e.g. security.protocol=ssl); over those of --properties-file."
    )
    var properties: [String] = []

    @Option(
        name: .customLong("properties-file"),
        help:
            "A file of librdkafka properties, NAME=VALUE per line, as Kafka's tools take them: secrets stay off the command line (environment SLUICE_KAFKA_PROPERTIES_FILE)."
    )
    var propertiesFile: String?

    /// --properties-file, else SLUICE_KAFKA_PROPERTIES_FILE.
    var propertiesPath: String? {
        propertiesFile ?? ProcessInfo.processInfo.environment["SLUICE_KAFKA_PROPERTIES_FILE"]
    }

    func validate() throws {
        for property in properties where !property.contains("=") {
            throw ValidationError("--property '\(property)' is not NAME=VALUE")
        }
        if let propertiesPath {
            do {
                _ = try KafkaPropertiesFile.read(propertiesPath)
            } catch {
                throw ValidationError("\(error)")
            }
        }
    }

    /// The properties of --properties-file, with --property's over them.
    func librdkafkaProperties() throws -> [String: String] {
        var merged: [String: String] = [:]
        if let propertiesPath {
            do {
                merged = try KafkaPropertiesFile.read(propertiesPath)
            } catch {
                throw AdminClient.Failure(description: "\(error)")
            }
        }
        for property in properties {
            let parts = property.split(separator: "=", maxSplits: 1)
            merged[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        return merged
    }
}
