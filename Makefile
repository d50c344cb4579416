# Sluice: the two quick-start commands are `make demo` and `make test`.
SWIFT ?= swift

.PHONY: deps build test demo clean

deps:
	@scripts/ensure-deps.sh

build: deps
	$(SWIFT) build -Xswiftc -warnings-as-errors

test: deps
	$(SWIFT) build --build-tests -Xswiftc -warnings-as-errors
	$(SWIFT) test

demo: deps
	scripts/demo.sh

clean:
	rm -rf .build
