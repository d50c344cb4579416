import Testing

@testable import SluiceAdmin

@Suite("A supervisor's /metrics: its own and its workers' texts as one exposition")
struct WorkerMetricsTests {
    @Test(
        "each family once with its HELP and TYPE, every process's samples under it, a worker's labelled with its slot")
    func merge() {
        let own = """
            # TYPE sluice_worker_restarts_total counter
            sluice_worker_restarts_total{slot="0"} 1
            sluice_worker_restarts_total{slot="1"} 0

            """
        func worker(_ processed: Int) -> String {
            """
            # HELP sluice_messages_processed_total Messages handled
            # TYPE sluice_messages_processed_total counter
            sluice_messages_processed_total{topic="orders"} \(processed)
            # TYPE sluice_handler_duration_seconds histogram
            sluice_handler_duration_seconds_bucket{topic="orders",le="0.005"} 3
            sluice_handler_duration_seconds_bucket{topic="orders",le="+Inf"} 4
            sluice_handler_duration_seconds_sum{topic="orders"} 0.01
            sluice_handler_duration_seconds_count{topic="orders"} 4
            # TYPE sluice_shards gauge
            sluice_shards 4

            """
        }
        let merged = WorkerMetrics.merge([(nil, own), (0, worker(10)), (1, worker(20))])
        #expect(
            merged == """
                # TYPE sluice_worker_restarts_total counter
                sluice_worker_restarts_total{slot="0"} 1
                sluice_worker_restarts_total{slot="1"} 0
                # HELP sluice_messages_processed_total Messages handled
                # TYPE sluice_messages_processed_total counter
                sluice_messages_processed_total{worker="0",topic="orders"} 10
                sluice_messages_processed_total{worker="1",topic="orders"} 20
                # TYPE sluice_handler_duration_seconds histogram
                sluice_handler_duration_seconds_bucket{worker="0",topic="orders",le="0.005"} 3
                sluice_handler_duration_seconds_bucket{worker="0",topic="orders",le="+Inf"} 4
                sluice_handler_duration_seconds_sum{worker="0",topic="orders"} 0.01
                sluice_handler_duration_seconds_count{worker="0",topic="orders"} 4
                sluice_handler_duration_seconds_bucket{worker="1",topic="orders",le="0.005"} 3
                sluice_handler_duration_seconds_bucket{worker="1",topic="orders",le="+Inf"} 4
                sluice_handler_duration_seconds_sum{worker="1",topic="orders"} 0.01
                sluice_handler_duration_seconds_count{worker="1",topic="orders"} 4
                # TYPE sluice_shards gauge
                sluice_shards{worker="0"} 4
                sluice_shards{worker="1"} 4

                """)
    }
}
