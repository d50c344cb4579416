# Sluice: the two quick-start commands are `make demo` and `make test`.
SWIFT ?= swift

.PHONY: deps build test test-tracing-example demo docs clean

deps:
	@scripts/ensure-deps.sh

build: deps
	$(SWIFT) build -Xswiftc -warnings-as-errors

# The suite runs twice: against the system's librdkafka (Debian's 2.0.2), then with librdkafka 2.16 swapped in at
# run time, so Sluice is known to work on the librdkafka users of other platforms have.
test: deps
	scripts/ensure-chromium.sh
	$(SWIFT) build --build-tests -Xswiftc -warnings-as-errors
	$(SWIFT) test
	lib="$$(scripts/librdkafka-2.16.sh)" && LD_LIBRARY_PATH="$$lib" SLUICE_EXPECT_LIBRDKAFKA=2.16.0 $(SWIFT) test --skip-build
	$(MAKE) test-tracing-example
	$(MAKE) docs

# Examples/Tracing: a package of its own (swift-otel takes minutes to build on 2 cores, so Sluice's own build
# does not depend on it) showing how a service bootstraps an OpenTelemetry tracer; its test checks that a
# producer's traceparent continues in the handler's span, exported over OTLP/HTTP to a collector on loopback.
test-tracing-example: deps
	cd Examples/Tracing && $(SWIFT) build --build-tests -Xswiftc -warnings-as-errors && $(SWIFT) test --skip-build

# The DocC catalog of Sluice (Sources/Sluice/Sluice.docc), into .build/docs.
docs: deps
	mkdir -p .build/docs
	$(SWIFT) package --allow-writing-to-directory .build/docs generate-documentation --target Sluice \
		--output-path .build/docs/Sluice --warnings-as-errors
	$(SWIFT) package --allow-writing-to-directory .build/docs generate-documentation --target SluiceKafka \
		--output-path .build/docs/SluiceKafka --warnings-as-errors

demo: deps
	scripts/demo.sh

clean:
	rm -rf .build
