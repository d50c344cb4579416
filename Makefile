# Sluice: the two quick-start commands are `make demo` and `make test`.
SWIFT ?= swift

.PHONY: deps build lint test test-tansu test-alone test-tracing-example demo docs clean

deps:
	@scripts/ensure-deps.sh

build: deps
	$(SWIFT) build -Xswiftc -warnings-as-errors

# The tests that also run against tansu, an independent Kafka-compatible broker (they start their cluster with
# SluiceTesting's TestClusters): group consumption and commits, two host processes joining and leaving, the
# control plane (flags, trips, acks, audit, CreateTopics of its topics), crash containment with two hosts, dead
# letters, the fleet.
TANSU_TESTS = TestBrokerTests|ConsumedHeadersTests|LinkedLibrdkafkaTests|everyMessageOnceInOrder|onlyStoredOffsetsAreCommitted|handBackAfterFlagCycle|controlPlaneFlagAcrossProcesses|fleetUnderFlips|trapWithTwoHosts|deathRedoesNoFinishedWork|trapInOneWorker|staticMemberReplaced|flagReachesTheGroup|tripFollowsThePartition|SluiceHostTests/deadLetter\(\)|twoHostsShareTheGroup|controlCreateTopicsSetting|forgedRecordsRefused|signedGroup|forgedCommitSkipsNothing|controlTopicOfTwoPartitions|missingControlTopic|controlTopicNotCompacted|everyClientOverTLS|forgedRecordsAgainstServiceProcesses|signedGroupOfServiceProcesses|everyInputHasItsOutput|missingTopicIsNamed|TransactionTests/commitAndAbort|newerProducerFencesTheOlder|outputAndOffsetsCommitTogether|killNineInExactlyOnceTraffic|zombieIsFenced|failingForTwentySeconds|lastDelayThenDeadLetter|missingRetryTopic|youngOrdersWaitInTheRetryTopic

# Each pass's temporary files (a host's state directory holds a 6 MB crash journal and an 8 MB progress file; the
# suite starts hundreds of hosts) go to a folder of the build, removed after the pass: one pass left 2.1 GB in 340
# entries, and /tmp had gathered 78 GB of them from runs over days when the disk filled (a test run then failed).
TEST_TMPDIR = $(CURDIR)/.build/test-tmp

# The suite runs three times: against the system's librdkafka (Debian's 2.0.2), then with librdkafka 2.16 swapped
# in at run time, so Sluice is known to work on the librdkafka users of other platforms have; then the tests that
# matter most against tansu (with 2.16: 2.0.2 fails tansu's ApiVersions reply), so they do not rest on one broker.
test: deps lint
	scripts/ensure-chromium.sh
	scripts/ensure-valgrind.sh
	scripts/kubernetes-validate.sh >/dev/null
	scripts/ensure-tansu.sh >/dev/null
	$(SWIFT) build --build-tests -Xswiftc -warnings-as-errors
	rm -rf $(TEST_TMPDIR) && mkdir -p $(TEST_TMPDIR)
	TMPDIR=$(TEST_TMPDIR) $(SWIFT) test --skip $(ALONE_TESTS)
	rm -rf $(TEST_TMPDIR) && mkdir -p $(TEST_TMPDIR)
	lib="$$(scripts/librdkafka-2.16.sh)" && TMPDIR=$(TEST_TMPDIR) LD_LIBRARY_PATH="$$lib" SLUICE_EXPECT_LIBRDKAFKA=2.16.0 \
		$(SWIFT) test --skip-build --skip $(ALONE_TESTS)
	rm -rf $(TEST_TMPDIR)
	$(MAKE) test-tansu
	$(MAKE) test-alone
	$(MAKE) test-tracing-example
	$(MAKE) docs

# swift-format with the repository's .swift-format, every rule as an error: `swift format format -i -r Sources Tests
# Examples Package.swift` fixes what it reports.
lint:
	$(SWIFT) format lint --strict -r Sources Tests Examples Package.swift

# Tests that keep a core busy for a minute (sluice bench --instructions: valgrind children): run by themselves after
# the passes, not beside the suite's parallel service processes (the first fresh-clone run with it in the mock pass,
# beside a busy loop and a release build, had the HTTP flag source's three tests time out together).
ALONE_TESTS = BenchInstructionsTests

test-alone:
	rm -rf $(TEST_TMPDIR) && mkdir -p $(TEST_TMPDIR)
	TMPDIR=$(TEST_TMPDIR) $(SWIFT) test --skip-build --filter $(ALONE_TESTS)
	rm -rf $(TEST_TMPDIR)

# The tansu pass alone (after a build with tests).
test-tansu:
	rm -rf $(TEST_TMPDIR) && mkdir -p $(TEST_TMPDIR)
	lib="$$(scripts/librdkafka-2.16.sh)" && tansu="$$(scripts/ensure-tansu.sh)" && \
		TMPDIR=$(TEST_TMPDIR) SLUICE_TANSU="$$tansu" SLUICE_TEST_BROKER=tansu LD_LIBRARY_PATH="$$lib" \
		SLUICE_EXPECT_LIBRDKAFKA=2.16.0 $(SWIFT) test --skip-build --filter '$(TANSU_TESTS)'
	rm -rf $(TEST_TMPDIR)

# Examples/Tracing: a package of its own (swift-otel takes minutes to build on 2 cores, so Sluice's own build
# does not depend on it) showing how a service bootstraps an OpenTelemetry tracer; its test checks that a
# producer's traceparent continues in the handler's span, exported over OTLP/HTTP to a collector on loopback.
test-tracing-example: deps
	cd Examples/Tracing && $(SWIFT) build --build-tests -Xswiftc -warnings-as-errors && $(SWIFT) test --skip-build

# The DocC catalogs of Sluice, SluiceKafka and SluiceAdmin (Sources/*/*.docc), into .build/docs.
docs: deps
	mkdir -p .build/docs
	$(SWIFT) package --allow-writing-to-directory .build/docs generate-documentation --target Sluice \
		--output-path .build/docs/Sluice --warnings-as-errors
	$(SWIFT) package --allow-writing-to-directory .build/docs generate-documentation --target SluiceKafka \
		--output-path .build/docs/SluiceKafka --warnings-as-errors
	$(SWIFT) package --allow-writing-to-directory .build/docs generate-documentation --target SluiceAdmin \
		--output-path .build/docs/SluiceAdmin --warnings-as-errors

demo: deps
	scripts/demo.sh

clean:
	rm -rf .build
