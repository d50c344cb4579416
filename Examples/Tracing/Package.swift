// swift-tools-version:6.2
import PackageDescription

// An example of bootstrapping a tracer for a Sluice service: swift-otel exporting spans over OTLP/HTTP.
// A package of its own so that Sluice's own build does not compile swift-otel (minutes on 2 cores);
// `make test` builds and tests it.
let package = Package(
    name: "SluiceTracingExample",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Sluice", path: "../.."),
        // Only the OTLP/HTTP exporter: the gRPC one doubles the build for nothing this example shows.
        .package(url: "https://github.com/swift-otel/swift-otel", from: "1.6.0", traits: ["OTLPHTTP"]),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .target(
            name: "OrderTracing",
            dependencies: [
                .product(name: "Sluice", package: "Sluice"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "TracedOrders",
            dependencies: [
                "OrderTracing",
                .product(name: "Sluice", package: "Sluice"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "OrderTracingTests",
            dependencies: [
                "OrderTracing",
                .product(name: "SluiceTesting", package: "Sluice"),
                .product(name: "Sluice", package: "Sluice"),
                .product(name: "SluiceKafka", package: "Sluice"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
    ]
)
