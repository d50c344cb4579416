import Foundation
import SluiceTesting
import Testing
import Yams

@testable import Sluice

/// There is no Docker engine here: the deploy files are checked for shape, so a typo does not wait for
/// the first `docker compose up` to surface.
@Suite("Deploy files", .timeLimit(.minutes(2)))
struct DeployFilesTests {
    @Test(
        "docker-compose.yml: KRaft Kafka with a healthcheck, topic creation, two OrderService replicas in one group, traffic"
    )
    func composeFile() throws {
        let text = try String(contentsOfFile: "docker-compose.yml", encoding: .utf8)
        let root = try #require(try Yams.load(yaml: text) as? [String: Any])
        let services = try #require(root["services"] as? [String: Any])
        #expect(
            Set(services.keys) == [
                "kafka", "create-topics", "order-service-1", "order-service-2", "traffic-orders", "traffic-payments",
            ])

        let kafka = try #require(services["kafka"] as? [String: Any])
        #expect((kafka["image"] as? String)?.hasPrefix("apache/kafka:") == true)
        let kafkaEnvironment = try #require(kafka["environment"] as? [String: Any])
        #expect(kafkaEnvironment["KAFKA_PROCESS_ROLES"] as? String == "broker,controller", "KRaft, no ZooKeeper")
        #expect((kafka["healthcheck"] as? [String: Any])?["test"] != nil)

        let topics = try #require(services["create-topics"] as? [String: Any])
        #expect(
            ((topics["depends_on"] as? [String: Any])?["kafka"] as? [String: Any])?["condition"] as? String
                == "service_healthy")
        let script = (topics["command"] as? [String])?.joined() ?? ""
        for topic in ["--topic orders ", "--topic payments ", "--topic orders.dlq "] { #expect(script.contains(topic)) }

        for name in ["order-service-1", "order-service-2"] {
            let service = try #require(services[name] as? [String: Any], "\(name) (merge key resolved)")
            #expect(
                (service["build"] as? [String: Any])?["dockerfile"] as? String == "Examples/OrderService/Dockerfile")
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
        #expect(
            text.contains("swift-backtrace-static") && text.contains("SWIFT_BACKTRACE=enable=yes,format=json"),
            "crash reports for quarantines")
        #expect(text.contains("ENTRYPOINT [\"OrderService\", \"--config\", \"/app/sluice.yaml\""))
    }

    static let kubernetesFiles = [
        "configmap.yaml", "deployment.yaml", "service.yaml", "poddisruptionbudget.yaml", "networkpolicy.yaml",
    ]

    @Test("the Kubernetes manifests validate against the Kubernetes schemas (kubernetes-validate, strict)")
    func kubernetesSchemas() async throws {
        // Waiting for child processes blocks a thread (on a fresh clone the validator's install takes a minute):
        // never one of the two Swift's concurrency shares with every other test of the process. A fresh-clone run
        // that held one here for that minute starved the pool, and tests all over the suite timed out.
        let (installed, validated, said) = try await Self.offThePool { try Self.validateManifests() }
        #expect(installed == 0, "scripts/kubernetes-validate.sh installs the validator")
        #expect(validated == 0, "\(said)")
        #expect(
            said.components(separatedBy: " passed for resource ").count - 1 == Self.kubernetesFiles.count, "\(said)")
    }

    /// Runs `body` on a thread of its own and waits for it without holding a thread.
    static func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
        }
    }

    /// Installs the validator (once) and runs it over the manifests: the two exit statuses and what it said.
    static func validateManifests() throws -> (Int32, Int32, String) {
        // posix_spawn, not Foundation's Process (see ChildProcess); this runs on a thread of its own.
        func run(_ executable: String, _ arguments: [String]) throws -> (Int32, String) {
            let output = try ChildProcess.pipe()
            let child = try ChildProcess(
                executable: executable, arguments: arguments, standardOutput: output.write.fileDescriptor,
                standardError: executable.hasSuffix(".sh") ? nil : output.write.fileDescriptor)
            try output.write.close()
            let said = String(decoding: output.read.readDataToEndOfFile(), as: UTF8.self)
            while child.isRunning { usleep(10_000) }
            return (child.terminationStatus, said)
        }
        let (installed, path) = try run(
            FileManager.default.currentDirectoryPath + "/scripts/kubernetes-validate.sh", [])
        guard installed == 0 else { return (installed, -1, "") }
        let validator = path.trimmingCharacters(in: .whitespacesAndNewlines)
        let (validated, said) = try run(validator, ["--strict"] + kubernetesFiles.map { "deploy/kubernetes/\($0)" })
        return (installed, validated, said)
    }

    @Test(
        "the Kubernetes Deployment: probes, grace period above shutdownTimeout, state directory on an emptyDir, token from the Secret; its configuration loads"
    )
    func kubernetesShape() async throws {
        func load(_ name: String) throws -> [String: Any] {
            try #require(
                try Yams.load(yaml: String(contentsOfFile: "deploy/kubernetes/\(name)", encoding: .utf8))
                    as? [String: Any])
        }
        let kustomization = try load("kustomization.yaml")
        #expect(Set(kustomization["resources"] as? [String] ?? []) == Set(Self.kubernetesFiles))

        // The configuration in the ConfigMap is one Sluice loads.
        let configMap = try load("configmap.yaml")
        let yaml = try #require((configMap["data"] as? [String: Any])?["sluice.yaml"] as? String)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("k8s-\(UUID().uuidString).yaml").path
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        let configuration = try await SluiceConfiguration.load(file: file, environment: ["SLUICE_ADMIN_TOKEN": "t"])
        #expect(configuration.control.enabled)

        let deployment = try load("deployment.yaml")
        let pod = try #require(
            ((deployment["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])
        let grace = try #require(pod["terminationGracePeriodSeconds"] as? Int)
        // Configuration values, not a measured time: the grace period exceeds shutdownTimeout by a margin.
        let marginAfterDrain = Duration.seconds(grace) - configuration.shutdownTimeout
        #expect(marginAfterDrain >= Duration.seconds(10), "SIGTERM drains within shutdownTimeout, with a margin")
        let container = try #require((pod["containers"] as? [[String: Any]])?.first)
        #expect(
            ((container["livenessProbe"] as? [String: Any])?["httpGet"] as? [String: Any])?["path"] as? String
                == "/healthz")
        #expect(
            ((container["readinessProbe"] as? [String: Any])?["httpGet"] as? [String: Any])?["path"] as? String
                == "/readyz")
        let environment = Dictionary(
            uniqueKeysWithValues: (container["env"] as? [[String: Any]] ?? []).map { ($0["name"] as? String ?? "", $0) }
        )
        #expect(environment["SLUICE_ADMIN_LISTEN"]?["value"] as? String == "0.0.0.0:8080")
        let tokenReference =
            (environment["SLUICE_ADMIN_TOKEN"]?["valueFrom"] as? [String: Any])?["secretKeyRef"] as? [String: Any]
        #expect(tokenReference?["name"] as? String == "order-service-admin")
        let stateDirectory = try #require(environment["SLUICE_HOST_STATE_DIRECTORY"]?["value"] as? String)
        #expect((environment["SWIFT_BACKTRACE"]?["value"] as? String)?.contains("output-to=\(stateDirectory)") == true)
        let mount = try #require(
            (container["volumeMounts"] as? [[String: Any]])?.first { $0["mountPath"] as? String == stateDirectory })
        let volume = try #require(
            (pod["volumes"] as? [[String: Any]])?.first { $0["name"] as? String == mount["name"] as? String })
        #expect(volume["emptyDir"] != nil, "the state directory survives container restarts")
        #expect((container["resources"] as? [String: Any])?["requests"] != nil)

        // Hardened: a numeric non-root user (the kubelet checks runAsNonRoot only against numbers), no
        // capabilities, RuntimeDefault seccomp, no service account token, a read-only root filesystem.
        let podSecurity = try #require(pod["securityContext"] as? [String: Any])
        #expect(podSecurity["runAsNonRoot"] as? Bool == true)
        let user = try #require(podSecurity["runAsUser"] as? Int)
        #expect(user > 0 && podSecurity["runAsGroup"] as? Int == user)
        #expect((podSecurity["seccompProfile"] as? [String: Any])?["type"] as? String == "RuntimeDefault")
        #expect(pod["automountServiceAccountToken"] as? Bool == false)
        let containerSecurity = try #require(container["securityContext"] as? [String: Any])
        #expect(
            containerSecurity["readOnlyRootFilesystem"] as? Bool == true
                && containerSecurity["allowPrivilegeEscalation"] as? Bool == false)
        #expect((containerSecurity["capabilities"] as? [String: Any])?["drop"] as? [String] == ["ALL"])
        let dockerfile = try String(contentsOfFile: "Examples/OrderService/Dockerfile", encoding: .utf8)
        #expect(
            dockerfile.contains("USER \(user):\(user)") && dockerfile.contains("--uid \(user)"),
            "the image's user is the pod's")
        // The admin port only for Prometheus and the service's own pods; no default token anywhere.
        let policy = try load("networkpolicy.yaml")
        let ingress = try #require(((policy["spec"] as? [String: Any])?["ingress"] as? [[String: Any]])?.first)
        #expect((ingress["ports"] as? [[String: Any]])?.map { $0["port"] as? Int } == [8080])
        #expect((ingress["from"] as? [Any])?.count == 2)
        let compose = try String(contentsOfFile: "docker-compose.yml", encoding: .utf8)
        #expect(
            !compose.contains("change-me") && compose.contains("${SLUICE_ADMIN_TOKEN:?"),
            "compose refuses to start without a token")
        #expect(!FileManager.default.fileExists(atPath: "deploy/kubernetes/secret.yaml"))
    }
}
