# eploop build helper. `make demo` builds and runs the echo demo; `make test` runs every test.
ROOT     := $(abspath .)
LIBDIR   := $(ROOT)/target/release
CC       ?= gcc
CFLAGS   ?= -O2 -g
EXFLAGS  := -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -I$(ROOT)/include
EXLIBS   := -L$(LIBDIR) -leploop -Wl,-rpath,$(LIBDIR)
EXAMPLES := $(patsubst c-examples/%.c,c-examples/build/%,$(wildcard c-examples/*.c))
VENV     := $(ROOT)/target/venv
PY       := $(VENV)/bin/python

.PHONY: all lib examples demo test test-rust test-python venv clean
all: lib examples

# The soname is libeploop.so.MAJOR: programs linked in the tree need that name beside the library.
lib:
	cargo build --release
	ln -sf libeploop.so $(LIBDIR)/libeploop.so.0

examples: lib $(EXAMPLES)

c-examples/build/%: c-examples/%.c include/eploop.h | lib
	@mkdir -p c-examples/build
	$(CC) $(CFLAGS) $(EXFLAGS) -o $@ $< $(EXLIBS)

demo: examples venv
	$(PY) c-examples/demo.py

venv: $(VENV)/.ready
$(VENV)/.ready:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q pytest hypothesis psutil
	touch $@

test: examples venv test-rust test-python

test-rust: lib
	cargo test --release

test-python: examples venv
	$(PY) -m pip install -q ./python-bindings
	$(PY) -m pytest -q tests python-bindings/tests

clean:
	cargo clean
	rm -rf c-examples/build
