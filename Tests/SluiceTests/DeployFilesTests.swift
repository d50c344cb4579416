import Foundation
import Testing
import Yams

/// There is no Docker engine here: the deploy files are checked for shape, so a typo does not wait for
/// the first `docker compose up` to surface.
@Suite("Deploy files", .timeLimit(.minutes(2)))
struct DeployFilesTests {
    @Test("docker-compose.yml: KRaft Kafka with a healthcheck, topic creation, two OrderService replicas in one group, traffic")
    func composeFile() throws {
        let text = try String(contentsOfFile: "docker-compose.yml", encoding: .utf8)
        let root = try #require(try Yams.load(yaml: text) as? [String: Any])
        let services = try #require(root["services"] as? [String: Any])
        #expect(Set(services.keys) == ["kafka", "create-topics", "order-service-1", "order-service-2", "traffic-orders", "traffic-payments"])

        let kafka = try #require(services["kafka"] as? [String: Any])
        #expect((kafka["image"] as? String)?.hasPrefix("apache/kafka:") == true)
        let kafkaEnvironment = try #require(kafka["environment"] as? [String: Any])
        #expect(kafkaEnvironment["KAFKA_PROCESS_ROLES"] as? String == "broker,controller", "KRaft, no ZooKeeper")
        #expect((kafka["healthcheck"] as? [String: Any])?["test"] != nil)

        let topics = try #require(services["create-topics"] as? [String: Any])
        #expect(((topics["depends_on"] as? [String: Any])?["kafka"] as? [String: Any])?["condition"] as? String == "service_healthy")
        let script = (topics["command"] as? [String])?.joined() ?? ""
        for topic in ["--topic orders ", "--topic payments ", "--topic orders.dlq "] { #expect(script.contains(topic)) }

        for name in ["order-service-1", "order-service-2"] {
            let service = try #require(services[name] as? [String: Any], "\(name) (merge key resolved)")
            #expect((service["build"] as? [String: Any])?["dockerfile"] as? String == "Examples/OrderService/Dockerfile")
            let environment = try #require(service["environment"] as? [String: Any])
            #expect(environment["SLUICE_KAFKA_BOOTSTRAP"] as? String == "kafka:9092")
            #expect(environment["SLUICE_ADMIN_LISTEN"] as? String == "0.0.0.0:8080")
            #expect(service["stop_grace_period"] as? String == "30s", "longer than host.shutdownTimeout")
        }
        #expect(FileManager.default.fileExists(atPath: "Examples/OrderService/Dockerfile"))
    }

    @Test("the Dockerfile builds both binaries and runs OrderService with the example configuration")
    func dockerfile() throws {
        let text = try String(contentsOfFile: "Examples/OrderService/Dockerfile", encoding: .utf8)
        #expect(text.contains("--product OrderService"))
        #expect(text.contains("--product sluice"))
        #expect(text.contains("librdkafka1"))
        #expect(text.contains("ENTRYPOINT [\"OrderService\", \"--config\", \"/app/sluice.yaml\""))
    }
}
